"""Runs the real `dpsd` binary once per test session for the Azure SDK compatibility tests.

`dpsd serve` starts on a free loopback port with a fresh data directory. Its service host
name (the connection string's HostName and the SAS audience) is set to `localhost:<port>`, so
the official SDK's `DeviceProvisioningClient.from_connection_string(...)` works unchanged: it
signs for the HostName and connects to `https://<HostName>`. The development CA that dpsd
writes to `<data>/pki/ca.pem` is trusted through azure-core's `connection_verify`.

Devices (tests/sdk/test_device_sdk.py, the official `azure-iot-device` SDK) reach dpsd's MQTT
listener on its default address, 0.0.0.0:8883: the Python device SDK always dials port 8883,
so no `--mqtt-listen` is passed, and the session fails at once if 8883 is already taken. A
config file (`--config`) links the hubs of `LINKED_HUBS`, which devices are assigned to.

The WebSocket tests (tests/sdk/test_websocket_sdk.py) get a dpsd of their own (`dpsd_443`): the
device SDK's `websockets=True` always dials port 443, so that one's HTTPS listener is on
127.0.0.1:443 (which needs the right to bind it: root, as in CI) and its other listeners on
free ports, so it runs beside the session's dpsd.

DPSD_BIN overrides the binary (default: target/debug/dpsd under the repository root).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"^  service API     https://(?P<addr>\S+)$")
# How long dpsd may take to print its readiness line (it generates a CA and a server key on
# a first start; a debug build on a busy 2-core machine can be slow).
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 3
MQTT_READY_LINE = re.compile(r"^  device MQTT     mqtts://(?P<addr>\S+)$")
SCOPE_READY_LINE = re.compile(r"^  ID scope        (?P<scope>\S+)(?: \(also in .*\))?$")
# The only port azure-iot-device's MQTT transport dials (mqtt_transport.py: port=8883).
MQTT_PORT = 8883
# The only port it dials with `websockets=True` (path /$iothub/websocket).
WEBSOCKET_PORT = 443
# The IoT hubs linked to the session's dpsd: (host name, allocation weight).
LINKED_HUBS = (("hub-one.example.net", 1), ("hub-two.example.net", 3))
# The session's dpsd publishes every assignment to this exchange of the RabbitMQ on
# 127.0.0.1:5672 (tests/sdk/test_feed.py reads it); unique per run, so runs never mix.
FEED_EXCHANGE = f"dps.sdk-test.{os.getpid()}"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"

# Loopback requests must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(_hosts + ["localhost", "127.0.0.1"])


@dataclasses.dataclass
class Dpsd:
    """A running dpsd and what a client needs to reach it."""

    process: subprocess.Popen
    data_dir: Path
    port: int
    host_name: str
    connection_string: str
    ca_file: Path
    stdout_lines: list
    stderr_file: Path
    id_scope: str
    mqtt_addr: str
    linked_hubs: tuple
    feed_exchange: str

    @property
    def ca_pem(self) -> str:
        """The development CA as PEM text (what `server_verification_cert` takes)."""
        return self.ca_file.read_text()

    def client(self, connection_string: Optional[str] = None, **kwargs) -> DeviceProvisioningClient:
        """An SDK client built exactly as a user would, trusting dpsd's development CA.

        Retries are off so a server error fails the test at once instead of after back-off.
        """
        kwargs.setdefault("connection_verify", str(self.ca_file))
        kwargs.setdefault("retry_total", 0)
        return DeviceProvisioningClient.from_connection_string(
            connection_string or self.connection_string, **kwargs
        )

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            return self.stderr_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def _dpsd_binary() -> Path:
    override = os.environ.get("DPSD_BIN")
    path = Path(override) if override else REPO_ROOT / "target" / "debug" / "dpsd"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"dpsd binary not found at {path}: build it first (cargo build -p dpsd) "
            "or point DPSD_BIN at it",
            pytrace=False,
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port_free(port: int, who: str) -> None:
    """Fails the session with a clear message when something already listens on `port`.

    SO_REUSEADDR as in dpsd's own bind (tokio sets it): connections of an earlier run in
    TIME_WAIT do not count, a listener on any local address does.
    """
    error = None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            error = e
    if error is not None:
        pytest.fail(
            f"TCP port {port} is already in use ({error}). {who} only dials port {port}, so the "
            f"test dpsd must listen there: stop what holds it (see `ss -ltnp 'sport = :{port}'`; "
            "another test session, or a dpsd left running) and run the tests again.",
            pytrace=False,
        )


def _write_config(path: Path, session: bool) -> None:
    """A dpsd config file: the linked hubs (everything else by flags) and, for the session's
    dpsd, the assignment feed (reconnections to the broker retried at least every 2 s, so the
    outage test does not wait out the default back-off); another dpsd has no feed and no
    metrics listener, so it takes nothing the session's holds."""
    if session:
        lines = ["[feed]", "enabled = true", f'exchange = "{FEED_EXCHANGE}"', 'reconnect_max = "2s"', ""]
    else:
        lines = ["[metrics]", "enabled = false", ""]
    for host_name, weight in LINKED_HUBS:
        lines += ["[[linked_hubs]]", f'host_name = "{host_name}"', f"allocation_weight = {weight}", ""]
    path.write_text("\n".join(lines))


def _child_env() -> dict:
    # Only the flags configure dpsd: no DPSD_* setting of the caller's environment leaks in.
    return {k: v for k, v in os.environ.items() if not k.startswith("DPSD_")}


def _pump(stream, lines: list, q: "queue.Queue[Optional[str]]") -> None:
    """Reads dpsd's stdout to the end (so it can never block on a full pipe)."""
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\r\n")
        lines.append(line)
        q.put(line)
    q.put(None)


def _stop(process: subprocess.Popen) -> Optional[int]:
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _start(binary: Path, data_dir: Path, api_port: Optional[int] = None) -> Dpsd:
    """The session's dpsd (MQTT on 8883, AMQP on its default port, the feed), or with
    `api_port` one whose every other listener is on a free loopback port."""
    session = api_port is None
    port = api_port or _free_port()
    host_name = "localhost" if port == 443 else f"localhost:{port}"
    stderr_file = data_dir.parent / f"{data_dir.name}.stderr.log"
    config_file = data_dir.parent / f"{data_dir.name}.toml"
    _write_config(config_file, session)
    own_ports = [] if session else ["--mqtt-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0"]
    stderr = open(stderr_file, "w")
    try:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--config",
                str(config_file),
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--host-name",
                host_name,
                "--log",
                "warn",
                *own_ports,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_child_env(),
            cwd=str(data_dir.parent),
        )
    finally:
        stderr.close()
    lines: list = []
    q: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines, q), daemon=True).start()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    addr = mqtt_addr = banner_scope = None
    # The banner prints the service API line, then the MQTT and ID scope lines.
    while addr is None or mqtt_addr is None or banner_scope is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(process)
            raise RuntimeError(
                "dpsd did not print its banner ('  service API', '  device MQTT' and '  ID scope'"
                f" lines) within {STARTUP_TIMEOUT_S:.0f}s;"
                f" stdout: {lines!r}; stderr: {stderr_file.read_text(errors='replace')[-4000:]}"
            )
        try:
            line = q.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:  # stdout closed: dpsd exited
            code = process.wait()
            raise RuntimeError(
                f"dpsd exited with status {code} before it was ready; stdout: {lines!r};"
                f" stderr: {stderr_file.read_text(errors='replace')[-4000:]}"
            )
        m = READY_LINE.match(line)
        if m:
            addr = m.group("addr")
        m = MQTT_READY_LINE.match(line)
        if m:
            mqtt_addr = m.group("addr")
        m = SCOPE_READY_LINE.match(line)
        if m:
            banner_scope = m.group("scope")

    if addr != f"127.0.0.1:{port}":
        _stop(process)
        raise RuntimeError(f"dpsd serves on {addr}, not on the requested 127.0.0.1:{port}")

    if session and not mqtt_addr.endswith(f":{MQTT_PORT}"):
        _stop(process)
        raise RuntimeError(f"dpsd's MQTT listener is on {mqtt_addr}, not on port {MQTT_PORT}")

    cs_file = data_dir / "service-connection-string"
    ca_file = data_dir / "pki" / "ca.pem"
    connection_string = cs_file.read_text().strip()
    if not ca_file.is_file():
        _stop(process)
        raise RuntimeError(f"dpsd is ready but {ca_file} does not exist")
    id_scope = (data_dir / "id-scope").read_text().strip()
    if id_scope != banner_scope:
        _stop(process)
        raise RuntimeError(f"<data>/id-scope holds {id_scope!r} but dpsd printed {banner_scope!r}")
    return Dpsd(
        process=process,
        data_dir=data_dir,
        port=port,
        host_name=host_name,
        connection_string=connection_string,
        ca_file=ca_file,
        stdout_lines=lines,
        stderr_file=stderr_file,
        id_scope=id_scope,
        mqtt_addr=mqtt_addr,
        linked_hubs=tuple(h for h, _ in LINKED_HUBS),
        feed_exchange=FEED_EXCHANGE,
    )


@pytest.fixture(scope="session")
def dpsd(tmp_path_factory) -> Dpsd:
    """One dpsd for the whole session, stopped (SIGTERM, then kill after 10 s) at the end."""
    _check_port_free(MQTT_PORT, "The azure-iot-device SDK")
    yield from _serve(tmp_path_factory, None)
    _delete_exchange(FEED_EXCHANGE)


@pytest.fixture(scope="module")
def dpsd_443(tmp_path_factory) -> Dpsd:
    """A dpsd of its own with its HTTPS listener on 127.0.0.1:443, for the device SDK over
    WebSocket, stopped at the end of the module."""
    _check_port_free(WEBSOCKET_PORT, "The azure-iot-device SDK with websockets=True")
    yield from _serve(tmp_path_factory, WEBSOCKET_PORT)


def _serve(tmp_path_factory, api_port: Optional[int]):
    """Starts dpsd (see `_start`), yields it, stops it."""
    binary = _dpsd_binary()
    failures = []
    server = None
    for attempt in range(BIND_ATTEMPTS):
        data_dir = tmp_path_factory.mktemp("dpsd-data")
        try:
            server = _start(binary, data_dir, api_port)
            break
        except RuntimeError as e:
            failures.append(str(e))
            # Another process may have taken the free port between probe and bind: retry on
            # a new port; any other failure repeats and is reported below.
    if server is None:
        pytest.fail("dpsd did not start:\n" + "\n".join(failures), pytrace=False)
    try:
        yield server
    finally:
        code = _stop(server.process)
        if code is None:
            print(f"\ndpsd did not exit within {STOP_TIMEOUT_S:.0f}s of SIGTERM and was killed")
        elif code != 0:
            print(f"\ndpsd exited with status {code} after SIGTERM; stderr:\n{server.stderr_tail()}")


def _delete_exchange(name: str) -> None:
    """Removes the session's feed exchange from the shared broker (best effort)."""
    import pika

    try:
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    except pika.exceptions.AMQPError:
        return
    try:
        connection.channel().exchange_delete(name)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def client(dpsd: Dpsd) -> DeviceProvisioningClient:
    """The owner-policy client, as `from_connection_string` builds it."""
    with dpsd.client() as c:
        yield c

"""dpsd's AMQP device listener as an independent AMQP 1.0 stack sees it: Apache Qpid Proton
(python-qpid-proton), not the Azure SDKs and not the fe2o3 client of the Rust tests, sends
what the SDKs never do - an oversized message (refused by the server's own limit, which
Proton does not enforce on its side), a link on a wrong address, a request without a
correlation id or with an unknown operation, bytes that are not AMQP after the protocol
header, a SASL exchange that never finishes, a third connection of one device, and Proton's
own default of one name for both links. Each gets a clear error, and a fresh device registers over the same listener afterwards.

The session's dpsd (conftest.py) listens for AMQP on its default address, 0.0.0.0:5671.
Devices sign in with SASL PLAIN: username `{idScope}/registrations/{registrationId}`, password
a SAS token, as the Node SDK does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import time
import urllib.parse
import uuid
from typing import Optional

import pytest

try:
    from proton import Delivery, Message, SSLDomain
    from proton import ConnectionException
    from proton.utils import BlockingConnection, ConnectionClosed, LinkDetached
except ImportError as e:  # a venv made before python-qpid-proton was added to requirements.txt
    raise ImportError(
        f"{e}: the AMQP wire tests need python-qpid-proton; install the pinned packages with "
        "`target/sdk-venv/bin/pip install -r tests/sdk/requirements.txt`"
    ) from e

# dpsd's default AMQP port (conftest.py passes no --amqp-listen).
AMQP_PORT = 5671
# Longest wait for any one answer; dpsd answers in milliseconds.
TIMEOUT_S = 20.0
# dpsd's default open_timeout (dps_amqp::AmqpLimits): a connection without both links by then
# is closed. The SASL test waits a little longer than that.
OPEN_TIMEOUT_S = 10.0
# dpsd's default max_message (96 KiB, DPS's largest message).
MAX_MESSAGE = 96 * 1024
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def address(dpsd, rid: str) -> str:
    return f"{dpsd.id_scope}/registrations/{rid}"


def sas_token(resource: str, key_b64: str, ttl_s: int = 3600) -> str:
    """A device SAS token as the Azure SDKs make one (`skn=registration`)."""
    sr = urllib.parse.quote(resource, safe="")
    expiry = int(time.time()) + ttl_s
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn=registration"


def enroll(client, rid: str) -> str:
    """An individual symmetric-key enrollment through the service API; returns its key."""
    key = base64.b64encode(os.urandom(32)).decode()
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key}},
        },
    )
    return key


def connect(dpsd, rid: str, key: str) -> BlockingConnection:
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(str(dpsd.ca_file))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return BlockingConnection(
        f"amqps://localhost:{AMQP_PORT}",
        timeout=TIMEOUT_S,
        ssl_domain=domain,
        sasl_enabled=True,
        allowed_mechs="PLAIN",
        user=address(dpsd, rid),
        password=sas_token(address(dpsd, rid), key),
    )


class Device:
    """One connection with a receiver and a sender link on the device's address (the
    receiver first, as the Node SDK attaches them). Each link gets a name of its own, as the
    SDKs give them: Proton's default names both `<container>-<address>`."""

    def __init__(self, dpsd, rid: str, key: str):
        self.address = address(dpsd, rid)
        self.connection = connect(dpsd, rid, key)
        self.receiver = self.connection.create_receiver(self.address, credit=8, name=f"receiver-{uuid.uuid4()}")
        self.sender = self.connection.create_sender(self.address, name=f"sender-{uuid.uuid4()}")

    def send(self, message: Message) -> Delivery:
        """Sends `message` and waits until the server settled it."""
        delivery = self.sender.link.send(message)
        self.connection.wait(
            lambda: delivery.remote_state in (Delivery.ACCEPTED, Delivery.REJECTED, Delivery.RELEASED),
            timeout=TIMEOUT_S,
            msg="the request is settled",
        )
        return delivery

    def rejected(self, message: Message) -> tuple:
        """Sends `message`, which the server must reject; its condition and error JSON."""
        delivery = self.send(message)
        assert delivery.remote_state == Delivery.REJECTED, delivery.remote_state
        condition = delivery.remote.condition
        assert condition is not None, "a rejection carries an error"
        return condition.name, json.loads(condition.description)

    def answered(self, message: Message) -> dict:
        """Sends `message`, which the server must accept; the answer's JSON body."""
        delivery = self.send(message)
        assert delivery.remote_state == Delivery.ACCEPTED, delivery.remote_state
        # dpsd sends answers settled: there is nothing to accept.
        answer = self.receiver.receive(timeout=TIMEOUT_S)
        assert answer.correlation_id == message.correlation_id, answer
        return json.loads(bytes(answer.body))

    def register_until_assigned(self) -> dict:
        status = self.answered(register_message())
        assert status["status"] == "assigning", status
        deadline = time.monotonic() + TIMEOUT_S
        while status["status"] == "assigning":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
            status = self.answered(poll_message(status["operationId"]))
        return status

    def close(self) -> None:
        self.connection.close()


def request(properties: dict, body: Optional[bytes], correlation_id: Optional[str] = "auto") -> Message:
    message = Message(body=body, inferred=body is not None, properties=properties)
    if correlation_id == "auto":
        correlation_id = str(uuid.uuid4())
    if correlation_id is not None:
        message.correlation_id = correlation_id
    return message


def register_message(correlation_id: Optional[str] = "auto", body: bytes = b'{"registrationId":"x"}') -> Message:
    properties = {"iotdps-operation-type": "iotdps-register", "iotdps-forceRegistration": False}
    return request(properties, body, correlation_id)


def poll_message(operation_id: str) -> Message:
    properties = {"iotdps-operation-type": "iotdps-get-operationstatus", "iotdps-operation-id": operation_id}
    return request(properties, b"")


def assert_fresh_device_registers(dpsd, client) -> None:
    rid = uid("amqp-canary")
    device = Device(dpsd, rid, enroll(client, rid))
    try:
        status = device.register_until_assigned()
        assert status["status"] == "assigned", status
        assert status["registrationState"]["deviceId"] == rid, status
    finally:
        device.close()


def tls_socket(dpsd) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(dpsd.ca_file))
    sock = socket.create_connection(("localhost", AMQP_PORT), timeout=TIMEOUT_S)
    return context.wrap_socket(sock, server_hostname="localhost")


def read_until_closed(sock: ssl.SSLSocket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (at most `within` s)."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except (ssl.SSLError, ConnectionResetError):
            return received
        if not chunk:
            return received
        received += chunk
    pytest.fail(f"the server kept the connection open for {within}s; it sent {received!r}")


# ---------------------------------------------------------------------------------------------


def test_a_device_registers_with_proton(dpsd, client):
    assert_fresh_device_registers(dpsd, client)


def test_an_oversized_message_is_refused_by_the_server(dpsd, client):
    rid = uid("amqp-big")
    device = Device(dpsd, rid, enroll(client, rid))
    # The server announced its limit at attach; Proton sends past it anyway (a check of the
    # client's own would prove nothing about the server).
    assert device.sender.link.remote_max_message_size == MAX_MESSAGE
    body = json.dumps({"registrationId": rid, "payload": "x" * (2 * MAX_MESSAGE)}).encode()
    with pytest.raises(LinkDetached) as refused:
        device.send(register_message(body=body))
    # The server's receiving link ends the transfer and says why, with its own limit.
    condition = refused.value.link.remote_condition
    assert condition.name == "amqp:link:message-size-exceeded", condition
    assert str(MAX_MESSAGE) in condition.description, condition
    device.close()
    assert_fresh_device_registers(dpsd, client)


def test_a_link_on_a_wrong_address_is_detached_with_not_found(dpsd, client):
    rid = uid("amqp-addr")
    key = enroll(client, rid)
    connection = connect(dpsd, rid, key)
    try:
        with pytest.raises(LinkDetached) as detached:
            sender = connection.create_sender("not/a/device/path", name="wrong-address")
            connection.wait(lambda: sender.link.state & sender.link.REMOTE_CLOSED, timeout=TIMEOUT_S)
        condition = detached.value.link.remote_condition
        assert condition.name == "amqp:not-found", condition
        assert "registrations" in condition.description, condition
        with pytest.raises(LinkDetached) as detached:
            sender = connection.create_sender(address(dpsd, uid("someone-else")), name="foreign-address")
            connection.wait(lambda: sender.link.state & sender.link.REMOTE_CLOSED, timeout=TIMEOUT_S)
        assert detached.value.link.remote_condition.name == "amqp:unauthorized-access"
    finally:
        connection.close()
    assert_fresh_device_registers(dpsd, client)


def test_two_links_of_one_name_get_a_clear_close(dpsd, client):
    """Proton's default link names are `<container>-<address>`, the same for the receiver and
    the sender. AMQP allows that (the roles differ); dpsd refuses it, and says so."""
    rid = uid("amqp-names")
    connection = connect(dpsd, rid, enroll(client, rid))
    connection.create_receiver(address(dpsd, rid), credit=8)
    with pytest.raises(ConnectionException):
        sender = connection.create_sender(address(dpsd, rid))
        connection.wait(lambda: sender.link.state & sender.link.REMOTE_CLOSED, timeout=TIMEOUT_S)
    condition = connection.conn.remote_condition
    assert condition is not None and condition.name == "amqp:not-allowed", condition
    assert "name" in condition.description, condition
    assert_fresh_device_registers(dpsd, client)


def test_a_request_without_correlation_id_or_with_an_unknown_operation_is_rejected(dpsd, client):
    rid = uid("amqp-bad")
    device = Device(dpsd, rid, enroll(client, rid))
    try:
        condition, error = device.rejected(register_message(correlation_id=None))
        assert condition == "com.microsoft:argument-error", condition
        assert error["errorCode"] == 400001 and "correlation" in error["message"], error
        unknown = request({"iotdps-operation-type": "iotdps-frobnicate"}, b"{}")
        condition, error = device.rejected(unknown)
        assert condition == "com.microsoft:argument-error", condition
        assert error["errorCode"] == 400001 and "iotdps-operation-type" in error["message"], error
        # The links stay up: the same device registers on them.
        status = device.register_until_assigned()
        assert status["status"] == "assigned", status
    finally:
        device.close()


def closed_after_open(dpsd, rid: str, key: str) -> ConnectionClosed:
    """How the server closed a connection right after its OPEN. Proton's blocking connect
    returns once the OPEN is in, so the close may come with it or just after it."""
    try:
        connection = connect(dpsd, rid, key)
    except ConnectionClosed as closed:
        return closed
    try:
        connection.wait(lambda: False, timeout=TIMEOUT_S)
    except ConnectionClosed as closed:
        return closed
    raise AssertionError("the server kept the connection open")


def test_a_device_holding_two_connections_is_refused_a_third_with_resource_limit_exceeded(dpsd, client):
    rid = uid("amqp-cap")
    key = enroll(client, rid)
    held = [Device(dpsd, rid, key) for _ in range(2)]
    # The server takes a connection's place once it has sent OPEN: an answered request on
    # each held connection shows both places are taken before the third connection comes.
    for device in held:
        assert device.register_until_assigned()["status"] == "assigned"
    # SASL and OPEN succeed (the device is attested), then the server closes with the reason.
    closed = closed_after_open(dpsd, rid, key)
    assert getattr(closed, "condition", None) == "amqp:resource-limit-exceeded", closed
    assert '"errorCode":429001' in str(closed), closed
    # The held connections still serve, and once one closes the device connects again.
    status = held[0].register_until_assigned()
    assert status["status"] == "assigned", status
    held[0].close()
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            again = Device(dpsd, rid, key)
            break
        except ConnectionException:
            # The server frees the place when it has seen the close: a moment after ours.
            assert time.monotonic() < deadline, "the closed connection never freed its place"
            time.sleep(0.05)
    assert again.register_until_assigned()["status"] == "assigned"
    again.close()
    held[1].close()


def test_garbage_after_the_protocol_header_closes_that_connection_only(dpsd, client):
    sock = tls_socket(dpsd)
    sock.sendall(SASL_HEADER + b"\x00\x00\x00\x10\x02\x00\x00\x00garbage!")
    received = read_until_closed(sock, TIMEOUT_S)
    # The server's SASL header and mechanisms, then the end of the connection.
    assert received.startswith(SASL_HEADER), received
    sock.close()
    assert_fresh_device_registers(dpsd, client)


def test_a_client_that_never_finishes_sasl_is_closed_at_the_open_timeout(dpsd, client):
    sock = tls_socket(dpsd)
    started = time.monotonic()
    sock.sendall(SASL_HEADER)
    received = read_until_closed(sock, OPEN_TIMEOUT_S + TIMEOUT_S)
    waited = time.monotonic() - started
    assert received.startswith(SASL_HEADER) and b"PLAIN" in received, received
    assert waited >= OPEN_TIMEOUT_S - 1, waited
    sock.close()
    assert_fresh_device_registers(dpsd, client)

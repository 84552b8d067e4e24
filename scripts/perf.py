#!/usr/bin/env python3
"""One command per performance target (docs/performance.md): starts a release `dpsd` on
loopback with its own data directory, drives it with `dps-loadtest`, alternates the variants
being compared (so drift of this shared machine hits both alike), and prints the ratios.

    scripts/perf.py feed        # X.509 registrations/s, assignment feed on vs off (>= 0.9x)
    scripts/perf.py amqp        # AMQP vs MQTT registrations/s, SAS and X.509 (>= 0.8x)
    scripts/perf.py https       # HTTPS device API vs MQTT registrations/s, SAS and X.509 (>= 0.8x)
    scripts/perf.py scrape      # X.509 registrations/s scraped every second vs not (>= 0.98x)
    scripts/perf.py baselines   # X.509 vs bare mutual TLS, SAS vs bare TLS, vs Mosquitto
    scripts/perf.py hold        # memory per connected device, 10,000 held (<= 10 KiB)
    scripts/perf.py open-loop   # open loop at 80% of the measured maximum for 60 s

Options: --devices N --concurrency C --rounds R (pairs of runs). Needs release builds
(`cargo build --release -p dpsd -p dps-loadtest`), RabbitMQ on 127.0.0.1:5672 for `feed`,
Mosquitto's binary for the `mqtt` baseline. Standard library only; loopback only; every run is
bounded by the load tool's own limits.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DPS_PERF_DPSD runs another dpsd binary (say, a build of an earlier commit) for comparison.
DPSD = os.environ.get("DPS_PERF_DPSD", os.path.join(ROOT, "target/release/dpsd"))
LOADTEST = os.path.join(ROOT, "target/release/dps-loadtest")
HUB = "hub-1.example.net"
# Limits that let one loopback address hold every simulated device (docs/performance.md).
LIMITS = """
[mqtt]
max_connections = 12000
max_connections_per_ip = 12000
max_unauthenticated_per_ip = 4096
max_connection_lifetime = "30m"

[amqp]
max_connections = 12000
max_connections_per_ip = 12000
max_unauthenticated_per_ip = 4096
max_connection_lifetime = "30m"

[api]
max_connections_per_ip = 1024
max_unauthenticated_per_ip = 256
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dpsd:
    """A release dpsd on free loopback ports with a fresh data directory; stopped on exit."""

    def __init__(self, extra_config=""):
        self.dir = tempfile.mkdtemp(prefix="dps-perf-")
        self.api, self.mqtt, self.amqp, self.metrics = (free_port() for _ in range(4))
        config = os.path.join(self.dir, "dpsd.toml")
        with open(config, "w") as f:
            f.write(f'[[linked_hubs]]\nhost_name = "{HUB}"\n{LIMITS}\n{extra_config}\n')
        env = dict(os.environ, DPSD_METRICS_LISTEN=f"127.0.0.1:{self.metrics}")
        self.log = open(os.path.join(self.dir, "dpsd.log"), "w")
        self.proc = subprocess.Popen(
            [DPSD, "serve", "--config", config, "--data-dir", os.path.join(self.dir, "data"),
             "--listen", f"127.0.0.1:{self.api}", "--mqtt-listen", f"127.0.0.1:{self.mqtt}",
             "--amqp-listen", f"127.0.0.1:{self.amqp}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"dpsd exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("dpsd did not become ready in 60 s")

    def loadtest(self, *args):
        """Runs the load tool against this dpsd; returns (devices report, extras)."""
        cmd = [LOADTEST, "--data-dir", os.path.join(self.dir, "data"),
               "--api", f"https://127.0.0.1:{self.api}", "--mqtt", f"127.0.0.1:{self.mqtt}",
               "--amqp", f"127.0.0.1:{self.amqp}", "--json", "--quiet",
               "--server-pid", str(self.proc.pid), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode not in (0, 2) or not lines:
            raise SystemExit(f"dps-loadtest failed ({out.returncode}): {out.stderr[-2000:]}")
        reports = [json.loads(line) for line in lines]
        return reports[0], (reports[1] if len(reports) > 1 else {})

    def metrics_url(self):
        return f"http://127.0.0.1:{self.metrics}/metrics"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


def cpu_us(extras):
    server = (extras.get("phase") or {}).get("server") or {}
    value = server.get("cpu_us_per_device")
    return value if value is not None else float("nan")


def line(label, report, extras):
    flow = report["flow_ms"]
    failed = report["failed"] + report["unfinished"]
    print(f"  {label:<28} {report['registrations_per_sec']:8.0f}/s  p50 {flow['p50']:7.1f} ms"
          f"  p99 {flow['p99']:7.1f} ms  server CPU {cpu_us(extras):7.0f} us/device"
          f"  failed {failed}", flush=True)


def compare(name, variants, rounds, target):
    """variants: [(label, run() -> (report, extras))]; the first is the baseline. Runs them
    alternately `rounds` times, then prints each variant's median rate and its ratio."""
    print(f"== {name}")
    results = {label: [] for label, _ in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for label, run in order:
            report, extras = run()
            line(label, report, extras)
            results[label].append((report, extras))
    base_label = variants[0][0]
    base = statistics.median(r["registrations_per_sec"] for r, _ in results[base_label])
    base_p99 = statistics.median(r["flow_ms"]["p99"] for r, _ in results[base_label])
    print(f"  median of {rounds}:")
    for label, runs in results.items():
        rate = statistics.median(r["registrations_per_sec"] for r, _ in runs)
        p99 = statistics.median(r["flow_ms"]["p99"] for r, _ in runs)
        cpu = statistics.median(cpu_us(e) for _, e in runs)
        ratio = rate / base if base else float("nan")
        note = "" if label == base_label else f"  ratio {ratio:.2f}x (target {target})"
        print(f"    {label:<26} {rate:8.0f}/s  p99 {p99:7.1f} ms (baseline's {base_p99:.1f})"
              f"  CPU {cpu:6.0f} us/device{note}")


def x509_args(args):
    return ["--devices", str(args.devices), "--concurrency", str(args.concurrency),
            "--poll-delay", "1ms"]


def feed(args):
    exchange = f"dps.perf.{os.getpid()}"
    prefix = f"dps.perf.{os.getpid()}."
    on = (f'[feed]\nenabled = true\nexchange = "{exchange}"\nhub_queues = true\n'
          f'queue_prefix = "{prefix}"\n')

    def run(config):
        def go():
            with Dpsd(config) as d:
                out = d.loadtest(*x509_args(args), "--attestation", "x509")
            if config:
                # The hub queue holds every event of the run: drop it.
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", prefix + HUB],
                               capture_output=True)
            return out
        return go

    compare("X.509 over MQTT, assignment feed on vs off",
            [("feed off", run("")), ("feed on", run(on))], args.rounds, ">= 0.9x")


def versus_mqtt(args, transport):
    """`transport`'s registrations/s against MQTT's on one dpsd, SAS then X.509."""
    with Dpsd() as d:
        for attestation in ["sas", "x509"]:
            compare(f"{attestation} registrations, {transport.upper()} vs MQTT", [
                (f"mqtt-{attestation}", lambda a=attestation: d.loadtest(
                    *x509_args(args), "--transport", "mqtt", "--attestation", a)),
                (f"{transport}-{attestation}", lambda a=attestation: d.loadtest(
                    *x509_args(args), "--transport", transport, "--attestation", a)),
            ], args.rounds, ">= 0.8x")


def amqp(args):
    versus_mqtt(args, "amqp")


def https(args):
    versus_mqtt(args, "https")


def scrape(args):
    with Dpsd() as d:
        compare("X.509 over MQTT, scraped every second vs not", [
            ("not scraped", lambda: d.loadtest(*x509_args(args), "--attestation", "x509")),
            ("scraped every 1 s", lambda: d.loadtest(
                *x509_args(args), "--attestation", "x509",
                "--scrape", d.metrics_url(), "--scrape-every", "1s")),
        ], args.rounds, ">= 0.98x")


def baselines(args):
    with Dpsd() as d:
        for attestation, kinds in [("x509", "mtls,mqtt"), ("sas", "tls")]:
            report, extras = d.loadtest(*x509_args(args), "--attestation", attestation,
                                        "--baseline", kinds)
            print(f"== {attestation} registrations vs baselines ({kinds})")
            line(attestation, report, extras)
            for b in (extras.get("baseline") or {}).get("runs", []):
                print(f"  baseline {b.get('kind')}: {b.get('per_sec', 0):.0f}/s, server CPU "
                      f"{b.get('server_cpu_us_per_connection') or float('nan'):.0f} us/conn;"
                      f" dpsd rate ratio {b.get('rate_ratio')}, CPU ratio {b.get('cpu_ratio')}"
                      f"{'; skipped: ' + b['skipped'] if b.get('skipped') else ''}")


def hold(args):
    with Dpsd() as d:
        report, _ = d.loadtest("--hold", str(args.devices), "--hold-for", "20s",
                               "--concurrency", str(args.concurrency))
        print(json.dumps(report, indent=1))


def open_loop(args):
    with Dpsd() as d:
        closed, _ = d.loadtest(*x509_args(args), "--attestation", "x509")
        rate = int(closed["registrations_per_sec"] * 0.8)
        print(f"== open loop at 80% of {closed['registrations_per_sec']:.0f}/s = {rate}/s for 60 s")
        report, extras = d.loadtest("--attestation", "x509", "--rate", f"{rate}/s",
                                    "--duration", "60s", "--devices", str(rate * 60),
                                    "--concurrency", "4000", "--poll-delay", "1ms")
        line(f"open {rate}/s", report, extras)
        print(f"  lag p99 {report['lag_ms']['p99']:.1f} ms, max {report['lag_ms']['max']:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=["feed", "amqp", "https", "scrape", "baselines",
                                           "hold", "open-loop"])
    parser.add_argument("--devices", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for binary in (DPSD, LOADTEST):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary} missing: cargo build --release -p dpsd -p dps-loadtest")
    {"feed": feed, "amqp": amqp, "https": https, "scrape": scrape, "baselines": baselines,
     "hold": hold, "open-loop": open_loop}[args.target](args)


if __name__ == "__main__":
    sys.exit(main())

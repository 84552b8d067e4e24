"""The assignment feed as a hub-side user sees it: devices register with the official Azure
device SDK, and the README's consumer (examples/feed_consumer.py, pika) receives one event per
assignment from the RabbitMQ on 127.0.0.1:5672; deleting records and enrollments announces
the device's deprovisioning; stopping RabbitMQ under load loses nothing and tells no device
"assigned" before its event is confirmed.

The session's dpsd publishes to its own exchange (conftest.FEED_EXCHANGE); every test binds
its own queue to it.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, List, Optional

import pika
import pytest
from azure.core.rest import HttpRequest

from conftest import BROKER_URL, REPO_ROOT
from test_device_sdk import (
    API_VERSION,
    assert_assigned,
    b64_key,
    derive_device_key,
    device_cert,
    register,
    register_all,
    root_ca,
    symmetric_key_device,
    uid,
    write_device_files,
    x509_device,
)

CONSUMER = REPO_ROOT / "examples" / "feed_consumer.py"
# How long an event may take to reach the consumer once the device heard "assigned" (the
# event was confirmed by then; this is the consumer's delivery) or once a delete returned.
EVENT_TIMEOUT_S = 20.0
# The outage test: devices registering in all, and how long RabbitMQ stays stopped.
OUTAGE_DEVICES = 12
OUTAGE_SECONDS = 6.0

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


class Consumer:
    """The README's consumer as a child process, its JSON lines collected by a thread."""

    def __init__(self, exchange: str, queue_name: str, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, str(CONSUMER), "--exchange", exchange, "--queue", queue_name, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: "queue.Queue[Optional[dict]]" = queue.Queue()
        self.events: List[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()
        first = self.lines.get(timeout=EVENT_TIMEOUT_S)
        assert first is not None and "ready" in first, f"consumer did not start: {self.stderr()}"

    def _pump(self) -> None:
        for raw in iter(self.process.stdout.readline, ""):
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(running)"
        return self.process.stderr.read()

    def wait_for(self, predicate: Callable[[dict], bool], what: str) -> dict:
        """The first event (consumer line) matching `predicate`, seen before or within
        EVENT_TIMEOUT_S."""
        for line in self.events:
            if predicate(line):
                return line
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.events.append(line)
            if predicate(line):
                return line
        pytest.fail(f"no {what} event within {EVENT_TIMEOUT_S:.0f}s; got {self.events!r}; {self.stderr()}")

    def event(self, event_type: str, registration_id: str) -> dict:
        return self.wait_for(
            lambda l: l["event"]["type"] == event_type and l["event"]["registrationId"] == registration_id,
            f"{event_type} for {registration_id}",
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def delete_queue(name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


@pytest.fixture
def consumer(dpsd):
    name = f"dps.sdk-test.consumer.{uuid.uuid4().hex[:8]}"
    c = Consumer(dpsd.feed_exchange, name)
    yield c
    c.stop()
    delete_queue(name)


def feed_status(client) -> dict:
    response = client.send_request(HttpRequest("GET", "/diagnostics/feed", params={"api-version": API_VERSION}))
    assert response.status_code == 200, f"{response.status_code}: {response.text()}"
    return response.json()


def test_each_registration_is_announced_with_what_the_hub_needs(dpsd, client, consumer, tmp_path):
    # a symmetric-key group device: the event carries its derived keys
    gid = uid("feed-grp")
    group_key = b64_key(64)
    secondary_group_key = b64_key(64)
    client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key, "secondaryKey": secondary_group_key},
            },
            "initialTwin": {"tags": {"site": "north"}, "properties": {"desired": {"rate": 5}}},
            "capabilities": {"iotEdge": True},
        },
    )
    rid = uid("feed-sym")
    outcome = register(symmetric_key_device(dpsd, rid, derive_device_key(group_key, rid)))
    state = assert_assigned(outcome, dpsd, device_id=rid)

    line = consumer.event("device.assigned", rid)
    event = line["event"]
    assert line["routingKey"] == f"{state.assigned_hub}.device.assigned", line
    assert line["contentType"] == "application/json" and line["persistent"], line
    assert line["messageId"] == event["eventId"], line
    assert event["schemaVersion"] == 1, event
    assert event["deviceId"] == rid and event["iotHubHostName"] == state.assigned_hub, event
    assert event["enrollment"] == {"kind": "group", "id": gid}, event
    assert event["iotEdge"] is True, event
    assert event["substatus"] == "initialAssignment", event
    assert event["initialTwin"]["tags"] == {"site": "north"}, event
    assert event["authentication"] == {
        "type": "sas",
        "symmetricKey": {
            "primaryKey": derive_device_key(group_key, rid),
            "secondaryKey": derive_device_key(secondary_group_key, rid),
        },
    }, event

    # an X.509 individual enrollment: the event names the certificate's thumbprint
    xid = uid("feed-x509")
    leaf = device_cert(xid, root_ca(f"{xid} test CA"))
    enrollment = client.enrollment.create_or_update(
        id=xid,
        enrollment={
            "registrationId": xid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf.pem}}}},
        },
    )
    thumbprint = enrollment["attestation"]["x509"]["clientCertificates"]["primary"]["info"]["sha1Thumbprint"]
    outcome = register(x509_device(dpsd, xid, write_device_files(tmp_path, leaf)))
    assert_assigned(outcome, dpsd, device_id=xid)
    event = consumer.event("device.assigned", xid)["event"]
    assert event["enrollment"] == {"kind": "individual", "id": xid}, event
    assert event["authentication"]["type"] == "selfSigned", event
    assert event["authentication"]["x509Thumbprint"]["primaryThumbprint"].upper() == thumbprint.upper(), event

    status = feed_status(client)
    assert status["enabled"] is True and status["status"]["linkUp"] is True, status


def test_deletes_announce_deprovisioning(dpsd, client, consumer):
    rid = uid("feed-del")
    key = b64_key()
    client.enrollment.create_or_update(
        id=rid,
        enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key}}},
    )
    state = assert_assigned(register(symmetric_key_device(dpsd, rid, key)), dpsd, device_id=rid)
    assigned = consumer.event("device.assigned", rid)

    client.device_registration_state.delete(id=rid)
    gone = consumer.event("device.deprovisioned", rid)["event"]
    assert gone["iotHubHostName"] == state.assigned_hub and gone["reason"] == "registrationDeleted", gone
    assert gone["eventId"] != assigned["event"]["eventId"]

    # registered again, then the enrollment itself is deleted
    assert_assigned(register(symmetric_key_device(dpsd, rid, key)), dpsd, device_id=rid)
    consumer.wait_for(
        lambda l: l["event"]["type"] == "device.assigned"
        and l["event"]["registrationId"] == rid
        and l["messageId"] != assigned["messageId"],
        f"second device.assigned for {rid}",
    )
    client.enrollment.delete(id=rid)
    consumer.wait_for(
        lambda l: l["event"]["type"] == "device.deprovisioned"
        and l["event"]["registrationId"] == rid
        and l["event"]["reason"] == "enrollmentDeleted",
        f"device.deprovisioned (enrollmentDeleted) for {rid}",
    )


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_a_broker_outage_under_load_loses_no_event(dpsd, client):
    gid = uid("feed-outage")
    group_key = b64_key(64)
    client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key}},
        },
    )
    # A durable queue made before the outage keeps every event published around it.
    queue_name = f"dps.sdk-test.outage.{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    channel.queue_declare(queue_name, durable=True)
    channel.queue_bind(queue_name, dpsd.feed_exchange, routing_key="#")
    connection.close()

    rids = [uid(f"feed-outage-{i}") for i in range(OUTAGE_DEVICES)]
    devices = [symmetric_key_device(dpsd, r, derive_device_key(group_key, r)) for r in rids]
    results = {}

    def run():
        for outcome, r in zip(register_all(devices, timeout=180.0), rids):
            results[r] = outcome

    registering = threading.Thread(target=run, daemon=True)
    registering.start()
    rabbitmqctl("stop_app")
    try:
        stopped_at = time.monotonic()
        # The service API answers while the broker is away, and says the link is down.
        assert client.enrollment_group.get(id=gid)["enrollmentGroupId"] == gid
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            time.sleep(0.5)
        assert feed_status(client)["status"]["linkUp"] is False
    finally:
        rabbitmqctl("start_app")
    registering.join(200.0)
    assert not registering.is_alive(), "registrations did not finish after the broker came back"

    for r in rids:
        assert_assigned(results[r], dpsd, device_id=r)
    consumer = Consumer(dpsd.feed_exchange, queue_name, "--idle", "5")
    try:
        consumer.process.wait(timeout=60)
        while True:
            line = consumer.lines.get(timeout=10)
            if line is None:
                break
            consumer.events.append(line)
    finally:
        consumer.stop()
        delete_queue(queue_name)
    assigned = Counter(
        l["event"]["registrationId"] for l in consumer.events if l["event"]["type"] == "device.assigned"
    )
    assert assigned == Counter({r: 1 for r in rids}), assigned
    for r in rids:
        record = client.device_registration_state.get(id=r)
        event = next(l["event"] for l in consumer.events if l["event"]["registrationId"] == r)
        assert record["assignedHub"] == event["iotHubHostName"], (record, event)
    assert feed_status(client)["status"]["linkUp"] is True

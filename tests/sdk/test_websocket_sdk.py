"""The official Azure IoT device SDK for Python (azure-iot-device), unchanged, registering
devices over MQTT over WebSocket (`websockets=True`) through dpsd's HTTPS listener.

With `websockets=True` the SDK dials `wss://<provisioning_host>:443/$iothub/websocket` with the
subprotocol `mqtt`, whatever else it is told, so these tests use a dpsd of their own whose HTTPS
listener is on 443 (`dpsd_443`, conftest.py). Devices are built as in test_device_sdk.py, with
that one keyword more.
"""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError

from test_device_sdk import (
    assert_assigned,
    assert_registration_record,
    assert_refused,
    b64_key,
    device_cert,
    device_errors,
    failed_attempts,
    register,
    symmetric_key_device,
    uid,
    write_device_files,
    x509_device,
)

# The SDK's own deprecation warning of ssl.PROTOCOL_TLSv1_2 (see test_device_sdk.py).
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def client_443(dpsd_443):
    """The owner-policy client of the 443 dpsd (its HostName is `localhost`)."""
    with dpsd_443.client() as c:
        yield c


def test_symmetric_key_over_websocket(dpsd_443, client_443):
    rid = uid("ws-sym")
    primary = b64_key()
    client_443.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": primary, "secondaryKey": b64_key()}},
        },
    )
    outcome = register(symmetric_key_device(dpsd_443, rid, primary, websockets=True))
    state = assert_assigned(outcome, dpsd_443, device_id=rid)
    assert_registration_record(client_443, rid, hub=state.assigned_hub, device_id=rid)


def test_x509_over_websocket(dpsd_443, client_443, tmp_path):
    rid = uid("ws-x509")
    leaf = device_cert(rid, None)
    client_443.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf.pem}}}},
        },
    )
    outcome = register(x509_device(dpsd_443, rid, write_device_files(tmp_path, leaf), websockets=True))
    state = assert_assigned(outcome, dpsd_443, device_id=rid)
    assert_registration_record(client_443, rid, hub=state.assigned_hub, device_id=rid)


def test_wrong_key_over_websocket_is_refused_and_recorded_as_mqtt(dpsd_443, client_443):
    rid = uid("ws-badkey")
    client_443.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": b64_key(), "secondaryKey": b64_key()}},
        },
    )
    outcome = register(symmetric_key_device(dpsd_443, rid, b64_key(), websockets=True))
    assert_refused(outcome, device_errors.CredentialError)
    with pytest.raises(ResourceNotFoundError):
        client_443.device_registration_state.get(id=rid)
    [attempt] = failed_attempts(client_443, rid)
    assert attempt["transport"] == "mqtt", attempt
    assert attempt["reason"] == "sas_signature_mismatch", attempt

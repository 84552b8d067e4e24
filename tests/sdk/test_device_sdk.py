"""The official Azure IoT device SDK for Python (azure-iot-device 2.14.0), unchanged,
registering devices against the real dpsd over MQTT/TLS.

Each device is built exactly as a user builds one for Azure DPS, only pointed at
`provisioning_host="localhost"` and given dpsd's development CA (PEM text) as
`server_verification_cert`; the SDK dials port 8883, where the session's dpsd listens
(conftest.py). Enrollments are made through the service API with the service SDK client of
conftest.py; its registration records, and the failed attempts that dpsd keeps for operators
(`GET /registrations/{id}/attempts`, a dpsd extension), are checked through the same client.

Every test uses its own registration ids, enrollment groups and test PKI, so tests are
independent of each other and of their order.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

import isodate
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.core.rest import HttpRequest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:
    from azure.iot.device import ProvisioningDeviceClient, X509
    from azure.iot.device import exceptions as device_errors
except ImportError as e:  # a venv made before the device SDK was added to requirements.txt
    raise ImportError(
        f"{e}: the device SDK tests need azure-iot-device; install the pinned packages with "
        "`target/sdk-venv/bin/pip install -r tests/sdk/requirements.txt`"
    ) from e

# A registration that works: one register publish, the Python client's fixed 2 s wait, one
# poll (about 2 s in all). The SDK gives each request 30 s (DEFAULT_TIMEOUT_INTERVAL) before
# it raises on its own; this bound lies past that, so a hang is always reported, never waited
# out forever.
REGISTER_TIMEOUT_S = 45.0
# A refused registration must be reported by the server, well before the SDK's own 30 s
# request timeout would end it.
REFUSAL_TIMEOUT_S = 15.0
# The api-version the service SDK uses (and dpsd's attempts endpoint accepts).
API_VERSION = "2021-10-01"

# azure-iot-device 2.14.0 builds its TLS context with ssl.PROTOCOL_TLSv1_2 (mqtt_transport.py),
# deprecated since Python 3.10: the SDK's own warning, nothing dpsd can change.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _sdk_logs(caplog):
    """The device SDK's own log (what it sent and received) is shown when a test fails."""
    caplog.set_level(logging.DEBUG, logger="azure.iot.device")


# ---------------------------------------------------------------------------------------------
# helpers: ids, keys


def uid(prefix: str) -> str:
    """A registration / group id unique to this run (lower case, as DPS ids usually are)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def b64_key(n: int = 32) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The device key of an enrollment-group device, as DPS documents it:
    base64(HMAC-SHA256(base64decode(group key), registration id))."""
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


# ---------------------------------------------------------------------------------------------
# helpers: test PKI (EC P-256, made with `cryptography`)


@dataclasses.dataclass
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _issue(common_name: str, issuer: Optional[Issued], *, ca: bool, path_length=None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def root_ca(name: str) -> Issued:
    return _issue(name, None, ca=True)


def intermediate_ca(name: str, root: Issued) -> Issued:
    return _issue(name, root, ca=True, path_length=0)


def device_cert(registration_id: str, issuer: Optional[Issued]) -> Issued:
    """A device certificate with CN = registration id and the clientAuth EKU (self-signed
    without an issuer)."""
    return _issue(registration_id, issuer, ca=False)


def write_device_files(directory: Path, leaf: Issued, chain: Sequence[Issued] = ()) -> X509:
    """The SDK's X509 for `leaf`: its certificate file holds the leaf then `chain` (PEM), which
    the SDK loads with `ssl_context.load_cert_chain` and so sends whole in the handshake."""
    name = leaf.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    cert_file = directory / f"{name}-{uuid.uuid4().hex[:6]}.pem"
    key_file = cert_file.with_suffix(".key")
    cert_file.write_text("".join(c.pem for c in (leaf, *chain)))
    key_file.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return X509(cert_file=str(cert_file), key_file=str(key_file))


# ---------------------------------------------------------------------------------------------
# helpers: devices


def symmetric_key_device(dpsd, registration_id: str, key: str, **options) -> ProvisioningDeviceClient:
    """`options`: more of the SDK's keyword arguments (`websockets=True`)."""
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost",
        registration_id=registration_id,
        id_scope=dpsd.id_scope,
        symmetric_key=key,
        server_verification_cert=dpsd.ca_pem,
        **options,
    )


def x509_device(dpsd, registration_id: str, credential: X509, **options) -> ProvisioningDeviceClient:
    return ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host="localhost",
        registration_id=registration_id,
        id_scope=dpsd.id_scope,
        x509=credential,
        server_verification_cert=dpsd.ca_pem,
        **options,
    )


@dataclasses.dataclass
class Outcome:
    """What `register()` did: its result or the exception it raised, and how long it took."""

    result: object
    error: Optional[BaseException]
    seconds: float

    def describe(self) -> str:
        if self.error is None:
            return f"returned {self.result} after {self.seconds:.1f}s"
        chain, e = [], self.error
        while e is not None:
            chain.append(f"{type(e).__module__}.{type(e).__qualname__}: {e}")
            e = e.__cause__ or e.__context__
        return f"raised after {self.seconds:.1f}s: " + " <- ".join(chain)


def register_all(devices: Sequence[ProvisioningDeviceClient], timeout: float = REGISTER_TIMEOUT_S) -> List[Outcome]:
    """Runs `register()` of every device at once, each in its own (daemon) thread, and waits
    at most `timeout` seconds in all: a hung SDK call fails the test instead of hanging it."""
    boxes = [dict() for _ in devices]

    def run(device, box):
        start = time.monotonic()
        try:
            box["result"] = device.register()
        except BaseException as e:  # reported through the Outcome
            box["error"] = e
        box["seconds"] = time.monotonic() - start

    threads = [
        threading.Thread(target=run, args=(d, b), daemon=True, name="dps-register")
        for d, b in zip(devices, boxes)
    ]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    for device, box in zip(devices, boxes):
        if "error" in box or hung:
            close_failed_device(device)
    if hung:
        pytest.fail(f"register() of device(s) {hung} did not return within {timeout:.0f}s")
    return [Outcome(b.get("result"), b.get("error"), b["seconds"]) for b in boxes]


def close_failed_device(device: ProvisioningDeviceClient) -> None:
    """Test hygiene only, after the SDK's part is over: shuts down the client of a failed
    registration as the SDK itself does after an assignment (`register()` calls
    `self._pipeline.shutdown(...)`), which disconnects it.

    The SDK has no public way to do that: a client whose registration failed keeps its MQTT
    connection (and keep-alive pings) open, and reconnects 10 s after dpsd stops, from a timer
    thread that then delays the interpreter's exit. This goes through the private pipeline.
    """
    pipeline = getattr(device, "_pipeline", None)
    if pipeline is None or not getattr(pipeline, "_running", False):
        return
    done = threading.Event()
    try:
        pipeline.shutdown(callback=lambda error=None: done.set())
    except Exception:  # already shut down: nothing to clean up
        return
    done.wait(5.0)


def register(device: ProvisioningDeviceClient, timeout: float = REGISTER_TIMEOUT_S) -> Outcome:
    return register_all([device], timeout)[0]


def assert_assigned(outcome: Outcome, dpsd, *, device_id: str, hub: Optional[str] = None):
    """The registration succeeded as the SDK reports it; returns its RegistrationState."""
    assert outcome.error is None, f"register() {outcome.describe()}"
    result = outcome.result
    assert result is not None and result.status == "assigned", outcome.describe()
    assert result.operation_id, outcome.describe()
    state = result.registration_state
    assert state is not None, outcome.describe()
    assert state.device_id == device_id, outcome.describe()
    if hub is not None:
        assert state.assigned_hub == hub, outcome.describe()
    assert state.assigned_hub in dpsd.linked_hubs, outcome.describe()
    return state


def assert_refused(outcome: Outcome, error_type: type) -> BaseException:
    """register() raised exactly `error_type`, promptly (not by running into a timeout)."""
    assert outcome.error is not None, f"register() should have failed but {outcome.describe()}"
    assert type(outcome.error) is error_type, f"expected {error_type.__name__}: {outcome.describe()}"
    assert outcome.seconds < REFUSAL_TIMEOUT_S, f"refused too slowly: {outcome.describe()}"
    assert "timed out" not in outcome.describe().lower(), outcome.describe()
    return outcome.error


# ---------------------------------------------------------------------------------------------
# helpers: the service side


def assert_registration_record(client, registration_id: str, *, hub: str, device_id: str) -> dict:
    record = client.device_registration_state.get(id=registration_id)
    assert record["registrationId"] == registration_id, record
    assert record["status"] == "assigned", record
    assert record["assignedHub"] == hub, record
    assert record["deviceId"] == device_id, record
    assert record.get("etag"), record
    return record


def failed_attempts(client, registration_id: str) -> list:
    """dpsd's recent failed attempts of a registration id (`GET /registrations/{id}/attempts`,
    authenticated like the rest of the service API)."""
    response = client.send_request(
        HttpRequest("GET", f"/registrations/{registration_id}/attempts", params={"api-version": API_VERSION})
    )
    assert response.status_code == 200, f"{response.status_code}: {response.text()}"
    body = response.json()
    assert body.get("registrationId") == registration_id, body
    attempts = body.get("attempts")
    assert isinstance(attempts, list), body
    for a in attempts:
        assert set(a) >= {"timeUtc", "transport", "reason", "detail"}, a
        assert isodate.parse_datetime(a["timeUtc"]).tzinfo is not None, a
    return attempts


def assert_attempt(client, registration_id: str, reason: str, *, secret: Optional[str] = None) -> dict:
    """The last failed attempt of `registration_id` came over MQTT for `reason`."""
    attempts = failed_attempts(client, registration_id)
    assert attempts, f"no failed attempt recorded for {registration_id}"
    last = attempts[-1]
    assert last["reason"] == reason, attempts
    assert last["transport"] == "mqtt", attempts
    assert isinstance(last["detail"], str) and last["detail"], attempts
    if secret:
        assert secret not in str(attempts), "a key shows in the diagnostics"
    return last


# ---------------------------------------------------------------------------------------------
# symmetric keys


def test_symmetric_key_individual_enrollment(dpsd, client):
    rid = uid("dev-sym")
    device_id = f"{rid}-device"
    primary = b64_key()
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "deviceId": device_id,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": b64_key()},
            },
            "allocationPolicy": "static",
            "iotHubHostName": "hub-two.example.net",
        },
    )

    outcome = register(symmetric_key_device(dpsd, rid, primary))
    state = assert_assigned(outcome, dpsd, device_id=device_id, hub="hub-two.example.net")
    assert state.sub_status == "initialAssignment", outcome.describe()
    assert state.created_date_time and state.last_update_date_time, outcome.describe()

    record = assert_registration_record(client, rid, hub="hub-two.example.net", device_id=device_id)
    assert record.get("substatus") == "initialAssignment", record
    assert failed_attempts(client, rid) == []


def test_symmetric_key_enrollment_group(dpsd, client):
    gid = uid("dev-symgrp")
    group_key = b64_key(64)
    client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key, "secondaryKey": b64_key(64)},
            },
            "allocationPolicy": "hashed",
        },
    )
    rids = [uid("dev-symgrp-a"), uid("dev-symgrp-b")]
    keys = [derive_device_key(group_key, r) for r in rids]

    first = register_all([symmetric_key_device(dpsd, r, k) for r, k in zip(rids, keys)])
    states = [assert_assigned(o, dpsd, device_id=r) for o, r in zip(first, rids)]
    for rid, state in zip(rids, states):
        assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)
    listed = {r["registrationId"] for r in client.device_registration_state.query(id=gid)}
    assert listed == set(rids)

    # registering again (a new client each, as after a reboot): the same hub and device id
    again = register_all([symmetric_key_device(dpsd, r, k) for r, k in zip(rids, keys)])
    for rid, state, outcome in zip(rids, states, again):
        state2 = assert_assigned(outcome, dpsd, device_id=rid, hub=state.assigned_hub)
        assert state2.created_date_time == state.created_date_time, outcome.describe()

    # the group key itself is not a device key
    outcome = register(symmetric_key_device(dpsd, rids[0], group_key))
    assert_refused(outcome, device_errors.CredentialError)
    assert_attempt(client, rids[0], "derived_key_expected", secret=group_key)


# ---------------------------------------------------------------------------------------------
# X.509


def test_x509_individual_enrollment(dpsd, client, tmp_path):
    rid = uid("dev-x509")
    ca = root_ca(f"{rid} test CA")
    leaf = device_cert(rid, ca)
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf.pem}}}},
        },
    )

    outcome = register(x509_device(dpsd, rid, write_device_files(tmp_path, leaf)))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert state.sub_status == "initialAssignment", outcome.describe()
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)


def test_x509_individual_enrollment_self_signed(dpsd, client, tmp_path):
    rid = uid("dev-x509ss")
    leaf = device_cert(rid, None)
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": leaf.pem}}}},
        },
    )
    outcome = register(x509_device(dpsd, rid, write_device_files(tmp_path, leaf)))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)


def _x509_group(client, gid: str, signing: Issued) -> None:
    client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": signing.pem}}}},
        },
    )


def test_x509_enrollment_group_signed_by_root(dpsd, client, tmp_path):
    """Root CA -> intermediate -> device; the group holds the root; the device sends leaf +
    intermediate."""
    gid = uid("dev-x509grp-root")
    root = root_ca(f"{gid} root")
    intermediate = intermediate_ca(f"{gid} intermediate", root)
    _x509_group(client, gid, root)

    rid = uid("dev-x509grp-root")
    credential = write_device_files(tmp_path, device_cert(rid, intermediate), [intermediate])
    outcome = register(x509_device(dpsd, rid, credential))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)
    assert [r["registrationId"] for r in client.device_registration_state.query(id=gid)] == [rid]


def test_x509_enrollment_group_signed_by_intermediate(dpsd, client, tmp_path):
    """Root CA -> intermediate -> device; the group holds the intermediate."""
    gid = uid("dev-x509grp-int")
    root = root_ca(f"{gid} root")
    intermediate = intermediate_ca(f"{gid} intermediate", root)
    _x509_group(client, gid, intermediate)

    rid = uid("dev-x509grp-int")
    credential = write_device_files(tmp_path, device_cert(rid, intermediate), [intermediate])
    outcome = register(x509_device(dpsd, rid, credential))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)
    assert [r["registrationId"] for r in client.device_registration_state.query(id=gid)] == [rid]


# ---------------------------------------------------------------------------------------------
# refusals: the device learns promptly, the operator learns why, and the service goes on


def test_wrong_symmetric_key_is_refused(dpsd, client):
    rid = uid("dev-badkey")
    primary, secondary = b64_key(), b64_key()
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}},
        },
    )
    wrong = b64_key()
    outcome = register(symmetric_key_device(dpsd, rid, wrong))
    assert_refused(outcome, device_errors.CredentialError)
    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id=rid)
    assert_attempt(client, rid, "sas_signature_mismatch", secret=wrong)

    # the right key (the secondary one, too) still works
    outcome = register(symmetric_key_device(dpsd, rid, secondary))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)


def test_certificate_from_unknown_ca_is_refused(dpsd, client, tmp_path):
    gid = uid("dev-unknownca")
    root = root_ca(f"{gid} root")
    intermediate = intermediate_ca(f"{gid} intermediate", root)
    _x509_group(client, gid, root)

    # a chain of the same shape, with the same registration id as CN, from a CA no group knows
    rid = uid("dev-unknownca")
    rogue_root = root_ca(f"{gid} root")  # even the same name: the key differs
    rogue_intermediate = intermediate_ca(f"{gid} intermediate", rogue_root)
    rogue = write_device_files(tmp_path, device_cert(rid, rogue_intermediate), [rogue_intermediate])
    outcome = register(x509_device(dpsd, rid, rogue))
    assert_refused(outcome, device_errors.CredentialError)
    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id=rid)
    assert_attempt(client, rid, "unknown_ca")

    # the same id with the group's chain is assigned
    good = write_device_files(tmp_path, device_cert(rid, intermediate), [intermediate])
    outcome = register(x509_device(dpsd, rid, good))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)


def test_disabled_enrollment_is_refused(dpsd, client):
    rid = uid("dev-disabled")
    key = b64_key()
    enrollment = client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": b64_key()}},
            "provisioningStatus": "disabled",
        },
    )
    assert enrollment["provisioningStatus"] == "disabled"

    # dpsd answers the poll with status "disabled"; the SDK treats every status but assigning,
    # assigned and failed as "invalid" (a ServiceError) and wraps it in a ClientError.
    outcome = register(symmetric_key_device(dpsd, rid, key))
    error = assert_refused(outcome, device_errors.ClientError)
    assert isinstance(error.__cause__, device_errors.ServiceError), outcome.describe()
    assert "invalid registration status disabled" in str(error.__cause__), outcome.describe()
    assert_attempt(client, rid, "enrollment_disabled", secret=key)

    # enabled again, the same device is assigned
    current = client.enrollment.get(id=rid)
    client.enrollment.create_or_update(
        id=rid, enrollment=dict(current, provisioningStatus="enabled"), if_match=current["etag"]
    )
    outcome = register(symmetric_key_device(dpsd, rid, key))
    state = assert_assigned(outcome, dpsd, device_id=rid)
    assert_registration_record(client, rid, hub=state.assigned_hub, device_id=rid)

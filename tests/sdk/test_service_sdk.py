"""The official Azure DPS service SDK for Python (azure-iot-deviceprovisioning 1.0.0b1),
unchanged, against the real dpsd over HTTPS.

Each test uses its own ids, so tests are independent of each other and of their order. The
assertions are what a user of the SDK would notice: return values, the exception types the
SDK raises, keys and certificate details.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import uuid

import isodate
import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.iot.deviceprovisioning import DeviceProvisioningClient, generate_sas_token
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

QUERY_ALL = {"query": "SELECT *"}


# ---------------------------------------------------------------------------------------------
# helpers


def uid(prefix: str) -> str:
    """A registration / group id unique to this run (DPS ids are lower case here)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def b64_key(n: int = 32) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def error_body(err: HttpResponseError) -> dict:
    """The DPS error body of a failed call (ProvisioningServiceErrorDetails)."""
    assert err.response is not None, err
    try:
        body = err.response.json()
    except Exception as e:  # pragma: no cover - reported as the failure
        raise AssertionError(f"error response is not JSON: {err.response.text()!r}") from e
    assert isinstance(body, dict), body
    return body


def assert_dps_error(err: HttpResponseError, status: int) -> dict:
    assert err.status_code == status, f"expected HTTP {status}, got {err.status_code}: {err}"
    body = error_body(err)
    code = body.get("errorCode")
    assert isinstance(code, int) and str(code).startswith(str(status)), (
        f"errorCode {code!r} is not a {status}xxx DPS code: {body}"
    )
    assert body.get("message"), body
    return body


def parse_time(text) -> datetime.datetime:
    assert isinstance(text, str) and text, f"not a date-time string: {text!r}"
    value = isodate.parse_datetime(text)
    assert value.tzinfo is not None, f"date-time without a time zone: {text!r}"
    return value


def key_bytes(key) -> bytes:
    assert isinstance(key, str) and key, f"not a key: {key!r}"
    raw = base64.b64decode(key, validate=True)
    assert len(raw) >= 16, f"key of {len(raw)} bytes: {key!r}"
    return raw


def no_keys(attestation: dict) -> None:
    """Enrollment responses never show symmetric keys (only the attestation mechanism does)."""
    keys = attestation.get("symmetricKey") or {}
    assert not keys.get("primaryKey") and not keys.get("secondaryKey"), (
        f"keys returned outside the attestation mechanism: {attestation}"
    )


def make_cert(common_name: str, *, ca: bool = False):
    """A self-signed EC P-256 certificate: (PEM text, DER bytes, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    der = cert.public_bytes(serialization.Encoding.DER)
    return pem, der, cert


def cert_der_from_text(text: str) -> bytes:
    """The DER of a certificate as the service returns it (PEM, or bare base64 DER)."""
    assert isinstance(text, str) and text.strip(), f"no certificate text: {text!r}"
    if "-----BEGIN" in text:
        return x509.load_pem_x509_certificate(text.encode()).public_bytes(serialization.Encoding.DER)
    return base64.b64decode("".join(text.split()), validate=True)


def assert_cert_info(info: dict, cert: x509.Certificate, der: bytes, common_name: str) -> None:
    assert info, "certificate info missing"
    assert info.get("subjectName") == f"CN={common_name}", info
    assert info.get("issuerName") == f"CN={common_name}", info
    assert info.get("sha1Thumbprint") == hashlib.sha1(der).hexdigest().upper(), info
    assert info.get("sha256Thumbprint") == hashlib.sha256(der).hexdigest().upper(), info
    assert info.get("version") == 3, info
    assert int(info.get("serialNumber"), 16) == cert.serial_number, info
    assert parse_time(info.get("notBeforeUtc")) == cert.not_valid_before_utc, info
    assert parse_time(info.get("notAfterUtc")) == cert.not_valid_after_utc, info


def bulk_delete(client: DeviceProvisioningClient, ids) -> None:
    ids = list(ids)
    for i in range(0, len(ids), 10):
        client.enrollment.run_bulk_operation(
            bulk_operation={
                "mode": "delete",
                "enrollments": [
                    {"registrationId": r, "attestation": {"type": "symmetricKey"}} for r in ids[i : i + 10]
                ],
            }
        )


# ---------------------------------------------------------------------------------------------
# the session's service


def test_connection_string_names_the_service(dpsd):
    parts = dict(p.split("=", 1) for p in dpsd.connection_string.split(";") if p)
    assert parts["HostName"] == dpsd.host_name
    assert parts["SharedAccessKeyName"] == "provisioningserviceowner"
    assert len(key_bytes(parts["SharedAccessKey"])) >= 16


# ---------------------------------------------------------------------------------------------
# individual enrollments


def test_symmetric_key_enrollment_lifecycle(client):
    rid = uid("sdk-sym")
    enrollment = {
        "registrationId": rid,
        "deviceId": f"{rid}-device",
        "attestation": {"type": "symmetricKey"},
        "initialTwin": {
            "tags": {"env": "Development"},
            "properties": {"desired": {"key": "value"}},
        },
        "reprovisionPolicy": {"migrateDeviceData": True, "updateHubAssignment": True},
    }
    created = client.enrollment.create_or_update(id=rid, enrollment=enrollment)
    assert created["registrationId"] == rid
    assert created["deviceId"] == f"{rid}-device"
    assert created["attestation"]["type"] == "symmetricKey"
    assert created.get("etag")
    assert created.get("provisioningStatus") in (None, "enabled")
    assert created["initialTwin"]["tags"]["env"] == "Development"
    assert created["initialTwin"]["properties"]["desired"]["key"] == "value"
    assert created["reprovisionPolicy"] == {"migrateDeviceData": True, "updateHubAssignment": True}
    created_at = parse_time(created.get("createdDateTimeUtc"))
    assert parse_time(created.get("lastUpdatedDateTimeUtc")) >= created_at

    # get, also looking at the raw response the SDK received
    response, got = client.enrollment.get(id=rid, cls=lambda pr, body, headers: (pr.http_response, body))
    assert response.status_code == 200
    assert response.headers.get("content-type", "").startswith("application/json"), dict(response.headers)
    assert got["registrationId"] == rid
    assert got["etag"] == created["etag"]
    assert got["deviceId"] == f"{rid}-device"
    no_keys(got["attestation"])

    # the server-generated keys, only through the attestation mechanism
    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    assert mechanism["type"] == "symmetricKey"
    primary = key_bytes(mechanism["symmetricKey"]["primaryKey"])
    secondary = key_bytes(mechanism["symmetricKey"]["secondaryKey"])
    assert primary != secondary

    # update what get returned, with its etag (the SDK's if_match)
    changed = dict(got)
    changed["provisioningStatus"] = "disabled"
    updated = client.enrollment.create_or_update(id=rid, enrollment=changed, if_match=got["etag"])
    assert updated["provisioningStatus"] == "disabled"
    assert updated["etag"] and updated["etag"] != got["etag"]
    assert parse_time(updated["createdDateTimeUtc"]) == created_at
    assert parse_time(updated["lastUpdatedDateTimeUtc"]) >= created_at
    assert client.enrollment.get(id=rid)["provisioningStatus"] == "disabled"
    # an update that sends no keys keeps the device's keys
    assert client.enrollment.get_attestation_mechanism(id=rid) == mechanism

    # a stale etag: 412, nothing changed
    stale = dict(changed, provisioningStatus="enabled")
    with pytest.raises(HttpResponseError) as info:
        client.enrollment.create_or_update(id=rid, enrollment=stale, if_match=got["etag"])
    assert_dps_error(info.value, 412)
    assert not isinstance(info.value, (ResourceNotFoundError, ResourceExistsError))
    current = client.enrollment.get(id=rid)
    assert current["provisioningStatus"] == "disabled"
    assert current["etag"] == updated["etag"]

    with pytest.raises(HttpResponseError) as info:
        client.enrollment.delete(id=rid, if_match=got["etag"])
    assert_dps_error(info.value, 412)
    assert client.enrollment.get(id=rid)["etag"] == updated["etag"]

    assert client.enrollment.delete(id=rid, if_match=updated["etag"]) is None
    with pytest.raises(ResourceNotFoundError) as info:
        client.enrollment.get(id=rid)
    assert_dps_error(info.value, 404)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get_attestation_mechanism(id=rid)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.delete(id=rid)


def test_symmetric_key_enrollment_with_own_keys(client):
    rid = uid("sdk-symown")
    primary, secondary = b64_key(32), b64_key(32)
    created = client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            },
        },
    )
    no_keys(client.enrollment.get(id=rid)["attestation"])
    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    assert mechanism["symmetricKey"]["primaryKey"] == primary
    assert mechanism["symmetricKey"]["secondaryKey"] == secondary
    # update without an etag (unconditional), rotating the keys
    new_primary = b64_key(32)
    client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": new_primary, "secondaryKey": primary},
            },
        },
    )
    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    assert mechanism["symmetricKey"] == {"primaryKey": new_primary, "secondaryKey": primary}
    client.enrollment.delete(id=rid)


def test_enrollment_body_with_explicit_nulls(client):
    """A body as the SDK's own tests build it: every optional member present, most null."""
    rid = uid("sdk-nulls")
    body = {
        "registrationId": rid,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": None, "secondaryKey": None}},
        "allocationPolicy": "custom",
        "capabilities": None,
        "reprovisionPolicy": None,
        "customAllocationDefinition": {"webhookUrl": "https://webhook.example.com/allocate", "apiVersion": "2019-03-31"},
        "provisioningStatus": None,
        "deviceId": None,
        "optionalDeviceInformation": {"additionalProperties": {"model": "x1", "nested": {"rev": 2}}},
        "iotHubs": None,
        "iotHubHostName": None,
        "initialTwin": None,
    }
    created = client.enrollment.create_or_update(id=rid, enrollment=body)
    assert created["registrationId"] == rid
    assert created["allocationPolicy"] == "custom"
    assert created["customAllocationDefinition"] == body["customAllocationDefinition"]
    assert created["optionalDeviceInformation"]["additionalProperties"] == {"model": "x1", "nested": {"rev": 2}}
    assert created.get("provisioningStatus") in (None, "enabled")
    # null keys mean "generate them"
    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    key_bytes(mechanism["symmetricKey"]["primaryKey"])
    key_bytes(mechanism["symmetricKey"]["secondaryKey"])
    client.enrollment.delete(id=rid)


# Azure DPS returns the symmetric keys in the create-or-update response, for keys the client
# sent and for keys the service generated (GET and query leave them out). Evidence: the SDK's
# own recorded live tests (azure-sdk-for-python, sdk/iothub/azure-iot-deviceprovisioning/tests/
# recordings/test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_
# lifecycle.json and test_enrollment_groups.py...symmetrickey_lifecycle.json), and its test
# test_enrollment_symmetrickey_lifecycle, which asserts
# `enrollment_response["attestation"]["symmetricKey"]["primaryKey"] == primary_key`.
def test_create_response_returns_generated_keys(client):
    rid = uid("sdk-putkeys")
    try:
        created = client.enrollment.create_or_update(
            id=rid, enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey"}}
        )
        mechanism = client.enrollment.get_attestation_mechanism(id=rid)
        assert created["attestation"].get("symmetricKey") == mechanism["symmetricKey"], created
    finally:
        client.enrollment.delete(id=rid)


def test_group_create_response_returns_given_keys(client):
    gid = uid("sdk-grpputkeys")
    keys = {"primaryKey": b64_key(32), "secondaryKey": b64_key(32)}
    try:
        created = client.enrollment_group.create_or_update(
            id=gid,
            enrollment_group={"enrollmentGroupId": gid, "attestation": {"type": "symmetricKey", "symmetricKey": keys}},
        )
        assert created["attestation"].get("symmetricKey") == keys, created
    finally:
        client.enrollment_group.delete(id=gid)


def test_get_shows_unassigned_registration_state(client):
    rid = uid("sdk-unassigned")
    client.enrollment.create_or_update(id=rid, enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey"}})
    try:
        state = client.enrollment.get(id=rid).get("registrationState")
        assert state and state.get("registrationId") == rid and state.get("status") == "unassigned", state
    finally:
        client.enrollment.delete(id=rid)


def test_tpm_enrollment(client):
    rid = uid("sdk-tpm")
    body = os.urandom(314)
    ek_bytes = len(body).to_bytes(2, "big") + body  # 0x01 0x3a + 314 bytes
    assert ek_bytes[:2] == b"\x01\x3a"
    endorsement_key = base64.b64encode(ek_bytes).decode()
    created = client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": endorsement_key}},
            "capabilities": {"iotEdge": True},
        },
    )
    assert created["registrationId"] == rid
    assert created["attestation"]["type"] == "tpm"
    assert base64.b64decode(created["attestation"]["tpm"]["endorsementKey"]) == ek_bytes
    assert created["capabilities"]["iotEdge"] is True
    got = client.enrollment.get(id=rid)
    assert got["attestation"]["type"] == "tpm"
    assert got["etag"] == created["etag"]
    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    assert mechanism["type"] == "tpm"
    assert base64.b64decode(mechanism["tpm"]["endorsementKey"]) == ek_bytes
    client.enrollment.delete(id=rid, if_match=got["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id=rid)


def test_tpm_enrollment_with_bad_endorsement_key_is_refused(client):
    rid = uid("sdk-tpmbad")
    # the length prefix says 0x013a bytes follow, but only 10 do
    bad = base64.b64encode(b"\x01\x3a" + os.urandom(10)).decode()
    with pytest.raises(HttpResponseError) as info:
        client.enrollment.create_or_update(
            id=rid,
            enrollment={"registrationId": rid, "attestation": {"type": "tpm", "tpm": {"endorsementKey": bad}}},
        )
    assert_dps_error(info.value, 400)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id=rid)


def test_x509_enrollment(client):
    rid = uid("sdk-x509")
    pem, der, cert = make_cert(rid)
    created = client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}},
        },
    )
    assert created["attestation"]["type"] == "x509"
    primary = created["attestation"]["x509"]["clientCertificates"]["primary"]
    assert_cert_info(primary.get("info"), cert, der, rid)
    assert not primary.get("certificate"), "certificate text returned outside the attestation mechanism"

    got = client.enrollment.get(id=rid)
    primary = got["attestation"]["x509"]["clientCertificates"]["primary"]
    assert_cert_info(primary.get("info"), cert, der, rid)
    assert not primary.get("certificate")

    mechanism = client.enrollment.get_attestation_mechanism(id=rid)
    assert mechanism["type"] == "x509"
    sent_back = mechanism["x509"]["clientCertificates"]["primary"]["certificate"]
    assert cert_der_from_text(sent_back) == der

    client.enrollment.delete(id=rid)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id=rid)


def test_x509_enrollment_with_garbage_certificate_is_refused(client):
    rid = uid("sdk-x509bad")
    with pytest.raises(HttpResponseError) as info:
        client.enrollment.create_or_update(
            id=rid,
            enrollment={
                "registrationId": rid,
                "attestation": {
                    "type": "x509",
                    "x509": {"clientCertificates": {"primary": {"certificate": "not a certificate"}}},
                },
            },
        )
    assert_dps_error(info.value, 400)


# ---------------------------------------------------------------------------------------------
# enrollment groups


def test_symmetric_key_enrollment_group(client):
    gid = uid("sdk-grp")
    created = client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "symmetricKey"},
            "initialTwin": {"tags": {"fleet": "a"}},
        },
    )
    assert created["enrollmentGroupId"] == gid
    assert created["attestation"]["type"] == "symmetricKey"
    assert created.get("etag")
    assert created.get("provisioningStatus") in (None, "enabled")
    parse_time(created.get("createdDateTimeUtc"))

    got = client.enrollment_group.get(id=gid)
    assert got["enrollmentGroupId"] == gid
    assert got["etag"] == created["etag"]
    assert got["initialTwin"]["tags"]["fleet"] == "a"
    no_keys(got["attestation"])

    mechanism = client.enrollment_group.get_attestation_mechanism(id=gid)
    assert mechanism["type"] == "symmetricKey"
    assert key_bytes(mechanism["symmetricKey"]["primaryKey"]) != key_bytes(
        mechanism["symmetricKey"]["secondaryKey"]
    )

    updated = client.enrollment_group.create_or_update(
        id=gid, enrollment_group=dict(got, provisioningStatus="disabled"), if_match=got["etag"]
    )
    assert updated["provisioningStatus"] == "disabled"
    assert updated["etag"] != got["etag"]
    assert client.enrollment_group.get_attestation_mechanism(id=gid) == mechanism
    with pytest.raises(HttpResponseError) as info:
        client.enrollment_group.create_or_update(id=gid, enrollment_group=got, if_match=got["etag"])
    assert_dps_error(info.value, 412)

    # the group's device registrations: none yet
    assert list(client.device_registration_state.query(id=gid)) == []

    # the group shows up in a group query
    ids = [g["enrollmentGroupId"] for g in client.enrollment_group.query(QUERY_ALL, top=2)]
    assert gid in ids
    assert len(ids) == len(set(ids))

    with pytest.raises(HttpResponseError) as info:
        client.enrollment_group.delete(id=gid, if_match=got["etag"])
    assert_dps_error(info.value, 412)
    client.enrollment_group.delete(id=gid, if_match=updated["etag"])
    with pytest.raises(ResourceNotFoundError) as info:
        client.enrollment_group.get(id=gid)
    assert_dps_error(info.value, 404)


def test_x509_enrollment_group_with_signing_certificate(client):
    gid = uid("sdk-grpx509")
    ca_name = f"{gid} root CA"
    pem, der, cert = make_cert(ca_name, ca=True)
    created = client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem}}}},
        },
    )
    assert created["attestation"]["type"] == "x509"
    primary = created["attestation"]["x509"]["signingCertificates"]["primary"]
    assert_cert_info(primary.get("info"), cert, der, ca_name)
    assert not primary.get("certificate")

    got = client.enrollment_group.get(id=gid)
    assert_cert_info(got["attestation"]["x509"]["signingCertificates"]["primary"].get("info"), cert, der, ca_name)

    mechanism = client.enrollment_group.get_attestation_mechanism(id=gid)
    assert cert_der_from_text(mechanism["x509"]["signingCertificates"]["primary"]["certificate"]) == der

    client.enrollment_group.delete(id=gid)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment_group.get(id=gid)


def test_enrollment_group_bulk_operations(client):
    gids = [uid("sdk-bgrp") for _ in range(2)]
    groups = [{"enrollmentGroupId": g, "attestation": {"type": "symmetricKey"}} for g in gids]
    result = client.enrollment_group.run_bulk_operation(bulk_operation={"mode": "create", "enrollmentGroups": groups})
    assert result["isSuccessful"] is True, result
    assert result["errors"] == [], result
    for g in gids:
        assert client.enrollment_group.get(id=g)["enrollmentGroupId"] == g
    result = client.enrollment_group.run_bulk_operation(bulk_operation={"mode": "create", "enrollmentGroups": groups})
    assert result["isSuccessful"] is False, result
    assert sorted(e["enrollmentGroupId"] for e in result["errors"]) == sorted(gids), result
    assert all(str(e["errorCode"]).startswith("409") for e in result["errors"]), result
    result = client.enrollment_group.run_bulk_operation(bulk_operation={"mode": "delete", "enrollmentGroups": groups})
    assert result["isSuccessful"] is True, result
    for g in gids:
        with pytest.raises(ResourceNotFoundError):
            client.enrollment_group.get(id=g)


# ---------------------------------------------------------------------------------------------
# query paging and bulk operations on individual enrollments


def test_enrollment_query_paging(client):
    rids = sorted(uid("sdk-page") for _ in range(7))
    for rid in rids:
        client.enrollment.create_or_update(
            id=rid, enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey"}}
        )
    try:
        # page by page, as the SDK hands them out with top=3
        pages = []
        pager = client.enrollment.query(QUERY_ALL, top=3).by_page()
        for page in pager:
            items = list(page)
            pages.append(items)
            assert len(pages) < 1000, "the query never ends"
        sizes = [len(p) for p in pages]
        assert all(n == 3 for n in sizes[:-1]) and sizes[-1] <= 3, sizes
        seen = [e["registrationId"] for p in pages for e in p]
        assert len(seen) == len(set(seen)), f"an enrollment came back twice: {seen}"
        assert set(rids) <= set(seen), f"missing: {set(rids) - set(seen)}"
        assert len(pages) >= 3, sizes
        for p in pages:
            for e in p:
                no_keys(e["attestation"])

        # the plain iterator walks every page too
        iterated = [e["registrationId"] for e in client.enrollment.query(QUERY_ALL, top=3)]
        assert iterated == seen

        # resuming from the continuation token after the first page gives the rest
        pager = client.enrollment.query(QUERY_ALL, top=3).by_page()
        first = [e["registrationId"] for e in next(pager)]
        token = pager.continuation_token
        assert token, "no continuation token after a full first page"
        rest = [
            e["registrationId"]
            for page in client.enrollment.query(QUERY_ALL, top=3).by_page(continuation_token=token)
            for e in page
        ]
        assert first + rest == seen
    finally:
        bulk_delete(client, rids)


def test_enrollment_bulk_operations(client):
    rids = [uid("sdk-bulk") for _ in range(2)]
    enrollments = [{"registrationId": r, "attestation": {"type": "symmetricKey"}} for r in rids]

    result = client.enrollment.run_bulk_operation(bulk_operation={"mode": "create", "enrollments": enrollments})
    assert result["isSuccessful"] is True, result
    assert result["errors"] == [], result
    for r in rids:
        assert client.enrollment.get(id=r)["registrationId"] == r
        key_bytes(client.enrollment.get_attestation_mechanism(id=r)["symmetricKey"]["primaryKey"])

    result = client.enrollment.run_bulk_operation(bulk_operation={"mode": "create", "enrollments": enrollments})
    assert result["isSuccessful"] is False, result
    errors = result["errors"]
    assert sorted(e["registrationId"] for e in errors) == sorted(rids), result
    for e in errors:
        assert e["errorCode"] == 409201, result
        assert e.get("errorStatus"), result

    result = client.enrollment.run_bulk_operation(bulk_operation={"mode": "delete", "enrollments": enrollments})
    assert result["isSuccessful"] is True, result
    assert result["errors"] == [], result
    for r in rids:
        with pytest.raises(ResourceNotFoundError):
            client.enrollment.get(id=r)


# ---------------------------------------------------------------------------------------------
# device registration states


def test_registration_state_of_unknown_device_is_not_found(client):
    rid = uid("sdk-noreg")
    with pytest.raises(ResourceNotFoundError) as info:
        client.device_registration_state.get(id=rid)
    assert_dps_error(info.value, 404)
    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.delete(id=rid)


# ---------------------------------------------------------------------------------------------
# authentication


def test_wrong_key_is_rejected(dpsd):
    parts = [p for p in dpsd.connection_string.split(";") if p]
    wrong = [f"SharedAccessKey={b64_key(32)}" if p.startswith("SharedAccessKey=") else p for p in parts]
    with dpsd.client(";".join(wrong)) as bad:
        with pytest.raises(ClientAuthenticationError) as info:
            bad.enrollment.get(id=uid("sdk-auth"))
        assert_dps_error(info.value, 401)
        with pytest.raises(ClientAuthenticationError):
            list(bad.enrollment.query(QUERY_ALL, top=1))
        with pytest.raises(ClientAuthenticationError):
            rid = uid("sdk-auth")
            bad.enrollment.create_or_update(
                id=rid, enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey"}}
            )


def test_unknown_policy_is_rejected(dpsd):
    cs = dpsd.connection_string.replace("SharedAccessKeyName=provisioningserviceowner", "SharedAccessKeyName=nobody")
    assert cs != dpsd.connection_string
    with dpsd.client(cs) as bad:
        with pytest.raises(ClientAuthenticationError) as info:
            bad.device_registration_state.get(id=uid("sdk-auth"))
        assert_dps_error(info.value, 401)


def test_other_credential_forms(dpsd):
    """The README's other ways to build a client: endpoint URL plus AzureNamedKeyCredential,
    and a SAS token from the SDK's generate_sas_token in an AzureSasCredential."""
    parts = dict(p.split("=", 1) for p in dpsd.connection_string.split(";") if p)
    name, key = parts["SharedAccessKeyName"], parts["SharedAccessKey"]
    endpoint = f"https://{dpsd.host_name}/"
    common = {"connection_verify": str(dpsd.ca_file), "retry_total": 0}
    rid = uid("sdk-cred")

    with DeviceProvisioningClient(
        endpoint=endpoint, credential=AzureNamedKeyCredential(name=name, key=key), **common
    ) as c:
        c.enrollment.create_or_update(id=rid, enrollment={"registrationId": rid, "attestation": {"type": "symmetricKey"}})

    token = generate_sas_token(dpsd.host_name, name, key)
    with DeviceProvisioningClient(endpoint=dpsd.host_name, credential=AzureSasCredential(token), **common) as c:
        assert c.enrollment.get(id=rid)["registrationId"] == rid
        c.enrollment.delete(id=rid)

    # expired an hour ago (well past any clock-skew allowance)
    expired = generate_sas_token(dpsd.host_name, name, key, expiry=-3600)
    with DeviceProvisioningClient(endpoint=dpsd.host_name, credential=AzureSasCredential(expired), **common) as c:
        with pytest.raises(ClientAuthenticationError):
            c.enrollment.get(id=rid)

#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/ from the test
vectors of the crates (SDK topics and usernames, the SAS tokens of dps-protocol.md §2.2, the
JSON of the service API tests, a throw-away certificate made with openssl). Run it again after
changing a vector; the output is committed, so CI does not need it."""

import base64
import json
import pathlib
import shutil
import struct
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
SCOPE = "0ne00000001"
REGISTER = "$dps/registrations/PUT/iotdps-register/?$rid=1"
POLL = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=OPID"


def write(target, name, data):
    path = ROOT / target
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- MQTT 3.1.1 packets -------------------------------------------------------------------
def remaining(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def packet(first, body):
    return bytes([first]) + remaining(len(body)) + body


def connect(client_id, username=None, password=None, keep_alive=60, level=4):
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = utf8("MQTT") + bytes([level, flags]) + struct.pack(">H", keep_alive) + utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(0x10, body)


def subscribe(pkid, *filters):
    body = struct.pack(">H", pkid) + b"".join(utf8(f) + bytes([q]) for f, q in filters)
    return packet(0x82, body)


def publish(topic, payload, qos=1, pkid=1):
    body = utf8(topic) + (struct.pack(">H", pkid) if qos else b"") + payload.encode()
    return packet(0x30 | (qos << 1), body)


USERNAME = f"{SCOPE}/registrations/dev-1/api-version=2019-03-31&ClientVersion=py%2F1.0"
SAS = ("SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1"
       "&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8%3D&se=1700000000")
FLOWS = {
    "register_and_poll": connect("dev-1", USERNAME, SAS)
    + subscribe(1, ("$dps/registrations/res/#", 1))
    + publish(REGISTER, '{"registrationId":"dev-1","payload":{"a":1}}')
    + publish(POLL, "", pkid=2)
    + packet(0x40, struct.pack(">H", 1))  # PUBACK
    + packet(0xC0, b"")  # PINGREQ
    + packet(0xA2, struct.pack(">H", 3) + utf8("$dps/registrations/res/#"))  # UNSUBSCRIBE
    + packet(0xE0, b""),  # DISCONNECT
    "x509_qos0": connect("dev-1", USERNAME, None, keep_alive=0)
    + subscribe(1, ("$dps/registrations/res/#", 0), ("other/#", 2))
    + publish(REGISTER, "", qos=0),
    "wrong_level": connect("dev-1", USERNAME, SAS, level=3),
    "no_username": connect("dev-1"),
    "unknown_topic": connect("dev-1", USERNAME, SAS) + publish("devices/dev-1/messages", "x"),
    "qos2": connect("dev-1", USERNAME, SAS) + publish(REGISTER, "{}", qos=2),
}
for name, data in FLOWS.items():
    # The session target reads a control byte first; 0x0A: accept, registrations
    # assigned, one second per packet. The codec target reads it as the chunk size.
    write("mqtt_session", name, b"\x0a" + data)
    write("mqtt_codec", name, b"\x07" + data)

# --- Topics and usernames -------------------------------------------------------------------
for i, text in enumerate([
    REGISTER,
    "$dps/registrations/PUT/iotdps-register/?$rid=0f0c1f2e-8b2d-4c8e-9a43-7d7b1b6f2a11",
    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.0123456789abcdef.0f0c1f2e-8b2d-4c8e-9a43-7d7b1b6f2a11",
    "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=4.a%2Eb&$rid=7&x=y",
    "$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2",
    USERNAME,
    f"{SCOPE}/registrations/my-device/api-version=2021-06-01",
    f"{SCOPE}/registrations//api-version=",
]):
    write("mqtt_topics", f"vector-{i}", text)

# --- SAS tokens (dps-protocol.md §2.2: Python, Node, C spellings; a service token) ---------
for i, text in enumerate([
    "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fmy-device&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8%3D&se=1700000000",
    "SharedAccessSignature sr=0ne00000000/registrations/my-device&sig=cSSRVMJE2MdNDBH%2F4S6uDo2WyL6ms4HMbddp2JVMnMk%3D&skn=registration&se=1700000000",
    "SharedAccessSignature sr=0ne00000000%2fregistrations%2fmy-device&sig=cezKdgfPtJjfDRGEBtMnzdDxBrY1rpqQL1awf0J3l8g%3d&se=1700000000&skn=registration",
    "SharedAccessSignature sr=localhost%3A8443&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8%3D&se=1800000000&skn=provisioningserviceowner",
    "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdevice-1&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8&se=9223372036854775807",
]):
    write("sas_token", f"vector-{i}", text)

# --- Certificates: a CA and a leaf, as PEM, bare base64 and DER ----------------------------
with tempfile.TemporaryDirectory() as tmp:
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650", "-subj", "/CN=Fuzz Root/O=DPS",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "dev.key", "-out", "dev.csr", "-subj", "/CN=dev-1")
    ssl("x509", "-req", "-in", "dev.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "3650",
        "-out", "dev.pem")
    for name in ["ca", "dev"]:
        pem = (pathlib.Path(tmp) / f"{name}.pem").read_text()
        der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
        write("certificate", f"{name}-pem", pem)
        write("certificate", f"{name}-der", der)
        write("certificate", f"{name}-base64", base64.b64encode(der).decode())
        CERTS = globals().setdefault("CERTS", {})
        CERTS[name] = pem

# --- Enrollment JSON (service API test bodies) ---------------------------------------------
KEYS = {"type": "symmetricKey", "symmetricKey": {
    "primaryKey": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "secondaryKey": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}}
X509_GROUP = {"type": "x509", "x509": {"signingCertificates": {"primary": {
    "certificate": CERTS["ca"]}}}}
ENROLLMENT = {
    "registrationId": "dev-1", "deviceId": "dev-1", "attestation": KEYS,
    "capabilities": {"iotEdge": False}, "provisioningStatus": "enabled",
    "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": False},
    "allocationPolicy": "static", "iotHubs": ["hub1.azure-devices.net"],
    "initialTwin": {"tags": {"floor": 3}, "properties": {"desired": {"rate": 5}}},
    "etag": "\"AAAAAAA=\"", "createdDateTimeUtc": "2023-11-14T22:13:20.1234567Z",
}
GROUP = {
    "enrollmentGroupId": "group-1", "attestation": X509_GROUP, "allocationPolicy": "custom",
    "customAllocationDefinition": {"webhookUrl": "https://example.com/api/alloc?code=x",
                                   "apiVersion": "2021-10-01"},
    "iotHubs": ["hub1.azure-devices.net", "hub2.azure-devices.net"],
}
TPM = {"registrationId": "tpm-1", "attestation": {"type": "tpm", "tpm": {
    "endorsementKey": base64.b64encode(bytes(range(64))).decode()}}}
for name, value in {
    "individual": ENROLLMENT, "group": GROUP, "tpm": TPM,
    "bulk-enrollments": {"mode": "create", "enrollments": [ENROLLMENT, TPM]},
    "bulk-groups": {"mode": "updateIfMatchETag", "enrollmentGroups": [GROUP]},
}.items():
    write("enrollment_json", name, json.dumps(value))

# --- Portal forms (first byte: 0 URL-encoded, 1 multipart with boundary XyZ) ---------------
write("portal_form", "symmetric-key", b"\x00id=dev-1&mechanism=symmetricKey&generate_keys=on"
      b"&allocation_policy=hashed&iot_hubs=hub1.azure-devices.net&status=enabled"
      b"&reprovision=migrate&initial_twin=%7B%22tags%22%3A%7B%7D%7D&iot_edge=on")
write("portal_form", "custom", b"\x00id=g1&mechanism=symmetricKey&primary_key="
      b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8%3D&secondary_key=AAECAwQFBgcICQoLDA0ODxAREh"
      b"MUFRYXGBkaGxwdHh8%3D&allocation_policy=custom&webhook_url=https%3A%2F%2Fexample.com%2Fa"
      b"&api_version=2021-10-01&status=disabled&reprovision=never&device_id=d1")


def multipart(fields, files):
    out = b""
    for name, value in fields:
        out += (f'--XyZ\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n").encode()
    for name, data in files:
        out += (f'--XyZ\r\nContent-Disposition: form-data; name="{name}"; filename="c.pem"\r\n'
                "Content-Type: application/x-pem-file\r\n\r\n").encode() + data + b"\r\n"
    return out + b"--XyZ--\r\n"


common = [("allocation_policy", "static"), ("static_hub", "hub1.azure-devices.net"),
          ("status", "enabled"), ("reprovision", "reset")]
write("portal_form", "x509-group", b"\x01" + multipart(
    [("id", "group-1"), ("mechanism", "x509")] + common,
    [("primary_cert", CERTS["ca"].encode())]))
write("portal_form", "x509-individual", b"\x01" + multipart(
    [("mechanism", "x509"), ("secondary_cert_text", CERTS["dev"])] + common,
    [("primary_cert", CERTS["dev"].encode())]))
write("portal_form", "tpm", b"\x01" + multipart(
    [("id", "tpm-1"), ("mechanism", "tpm"),
     ("endorsement_key", base64.b64encode(bytes(range(64))).decode())] + common, []))

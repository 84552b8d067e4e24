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

# --- AMQP 1.0 (dps-amqp): the encoding of the sections, frames and SASL the SDKs send -------
def amqp_str(text):
    data = text.encode()
    return bytes([0xA1, len(data)]) + data


def amqp_sym(text):
    data = text.encode()
    return bytes([0xA3, len(data)]) + data


def amqp_bin(data):
    return (bytes([0xA0, len(data)]) if len(data) < 256 else b"\xb0" + struct.pack(">I", len(data))) + data


def amqp_uint(n):
    return b"\x43" if n == 0 else bytes([0x52, n])


AMQP_NULL, AMQP_TRUE, AMQP_FALSE = b"\x40", b"\x41", b"\x42"


def amqp_list(*items):
    body = b"".join(items)
    return bytes([0xC0, len(body) + 1, len(items)]) + body


def amqp_map(*pairs):
    body = b"".join(k + v for k, v in pairs)
    return bytes([0xC1, len(body) + 1, 2 * len(pairs)]) + body


def described(code, value):
    return bytes([0x00, 0x53, code]) + value


def amqp_message(correlation_id, properties, body):
    out = b""
    if correlation_id is not None:
        # properties: message-id, user-id, to, subject, reply-to, correlation-id
        out += described(0x73, amqp_list(*[AMQP_NULL] * 5, amqp_str(correlation_id)))
    out += described(0x74, amqp_map(*[(amqp_str(k), v) for k, v in properties]))
    return out + body


def data_section(data):
    return described(0x75, amqp_bin(data))


REGISTER_PROPS = [("iotdps-operation-type", amqp_str("iotdps-register")),
                  ("iotdps-forceRegistration", AMQP_FALSE)]
POLL_PROPS = [("iotdps-operation-type", amqp_str("iotdps-get-operationstatus")),
              ("iotdps-operation-id", amqp_str("4.0123456789abcdef.0f0c1f2e-8b2d-4c8e-9a43-7d7b1b6f2a11"))]
MESSAGES = {
    "register": amqp_message("c-1", REGISTER_PROPS,
                             data_section(b'{"registrationId":"dev-1","payload":{"model":"x"}}')),
    "register-split": amqp_message("c-2", REGISTER_PROPS, data_section(b'{"registrationId":')
                                   + data_section(b'"dev-1"}')),
    "register-empty": amqp_message("c-3", REGISTER_PROPS, b""),
    "register-value": amqp_message("c-4", REGISTER_PROPS, described(0x77, amqp_str("{}"))),
    "poll": amqp_message("c-5", POLL_PROPS, described(0x77, b"\x40")),
    "no-correlation": amqp_message(None, REGISTER_PROPS, data_section(b"{}")),
    "bad-json": amqp_message("c-6", REGISTER_PROPS, data_section(b"[1,2]")),
    "symbol-type": amqp_message("c-7", [("iotdps-operation-type", amqp_sym("iotdps-register"))],
                                data_section(b"  ")),
}
for name, data in MESSAGES.items():
    write("amqp_message", name, data)


def frame(kind, body, channel=0):
    return struct.pack(">IBBH", 8 + len(body), 2, kind, channel) + body


def sasl_init(mechanism, response=None):
    fields = [amqp_sym(mechanism)] + ([amqp_bin(response)] if response is not None else [])
    return frame(1, described(0x41, amqp_list(*fields)))


ADDRESS = f"{SCOPE}/registrations/dev-1"
PLAIN = b"\x00" + ADDRESS.encode() + b"\x00" + SAS.encode()
OPEN = frame(0, described(0x10, amqp_list(amqp_str("device"))))
BEGIN = frame(0, described(0x11, amqp_list(AMQP_NULL, amqp_uint(1), amqp_uint(100), amqp_uint(100))))


def attach(name, handle, receiver, address):
    # name, handle, role, snd-settle-mode, rcv-settle-mode, source, target
    terminus = described(0x28 if receiver else 0x29, amqp_list(amqp_str(address)))
    source, target = (terminus, AMQP_NULL) if receiver else (described(0x28, amqp_list()), terminus)
    return frame(0, described(0x12, amqp_list(amqp_str(name), amqp_uint(handle),
                                                AMQP_TRUE if receiver else AMQP_FALSE,
                                                AMQP_NULL, AMQP_NULL, source, target)))


def transfer(delivery_id, message):
    # handle, delivery-id, delivery-tag, message-format, settled
    performative = described(0x14, amqp_list(amqp_uint(0), amqp_uint(delivery_id),
                                             amqp_bin(bytes([delivery_id])), amqp_uint(0),
                                             AMQP_FALSE))
    return frame(0, performative + message)


LINKS = attach("s", 0, False, ADDRESS) + attach("r", 1, True, f"amqps://localhost/{ADDRESS}")
SESSION = OPEN + BEGIN + LINKS + transfer(0, MESSAGES["register"]) + transfer(1, MESSAGES["poll"])
# The control byte: 1 = the stream starts with the SASL header, 0 = with the AMQP one.
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
write("amqp_frames", "plain", b"\x01" + sasl_init("PLAIN", PLAIN) + AMQP_HEADER + SESSION)
write("amqp_frames", "anonymous", b"\x01" + sasl_init("ANONYMOUS") + AMQP_HEADER
      + OPEN + BEGIN + LINKS + transfer(0, MESSAGES["bad-json"]))
write("amqp_frames", "no-sasl", b"\x00" + SESSION + frame(0, b""))
write("amqp_frames", "short-frame", b"\x00" + OPEN + struct.pack(">I", 5) + b"\x02")

# --- SASL (control byte: 0 PLAIN, 1 EXTERNAL, 2 ANONYMOUS, 3 a name up to a NUL) -----------
for name, data in {
    "plain": b"\x00" + PLAIN,
    "plain-authzid": b"\x00who\x00" + f"{SCOPE.upper()}/Registrations/Dev-1".encode() + b"\x00pw",
    "plain-url": b"\x00\x00" + f"amqps://dps.example.net/{ADDRESS}".encode() + b"\x00t",
    "external": b"\x01",
    "named": b"\x03SCRAM-SHA-256\x00n,,n=user,r=abc",
}.items():
    write("amqp_sasl", name, data)

# --- Link addresses and PLAIN usernames ------------------------------------------------------
for i, text in enumerate([
    ADDRESS, f"/{ADDRESS}", f"amqps://dps.example.net/{ADDRESS}",
    f"AMQPS://localhost:5671/{SCOPE}/Registrations/dev-1", "$cbs",
    f"{SCOPE}/registrations/dev-1/extra", f"https://host/{ADDRESS}",
]):
    write("amqp_address", f"vector-{i}", text)

# --- Operation tables (first byte: limits; then steps, see the target) ----------------------
write("amqp_operations", "register-poll-done", bytes([0x3F, 0x00, 0x02, 0x06, 0x02, 0x03]))
write("amqp_operations", "busy-then-again", bytes([0x7F, 0x01, 0x16, 0x02, 0x02, 0x02, 0x0E]))
write("amqp_operations", "limits", bytes([0x02, 0x00, 0x00, 0x05, 0x1E, 0x04, 0x02]))

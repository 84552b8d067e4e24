// The official Node device SDK on its WebSocket transports (azure-iot-provisioning-device-mqtt's
// MqttWs, azure-iot-provisioning-device-amqp's AmqpWs, with the symmetric-key and X.509 security
// clients), unchanged, registering devices against the real dpsd through its HTTPS listener:
// `ProvisioningDeviceClient.create('localhost', idScope, new MqttWs(), security)`. Both
// transports dial `wss://localhost:443/$iothub/websocket`, so run.sh runs this file with the
// service API on 443 (DPS_TEST_API_PORT=443; scripts/test.sh does).
//
// Every test uses its own ids, so tests are independent of each other and of their order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  assertRecorded,
  attempts,
  b64Key,
  describeError,
  enroll,
  register,
  REFUSAL_TIMEOUT_MS,
  selfSignedDeviceCert,
  serviceClient,
  symmetricKeyEnrollment,
  uid,
  wsSymmetricKeyDevice,
  wsX509Device,
} from './lib/dpsd.mjs';

const client = serviceClient();

for (const protocol of ['mqtt', 'amqp']) {
  test(`${protocol} over WebSocket, symmetric key: assigned to a linked hub with its device id`, async () => {
    const registrationId = uid(`ws-${protocol}-sym`);
    const deviceId = `${registrationId}-device`;
    const key = b64Key();
    await enroll(client, symmetricKeyEnrollment(registrationId, key, b64Key(), { deviceId }));

    const outcome = await register(wsSymmetricKeyDevice(protocol, registrationId, key));
    const state = assertAssigned(outcome, { registrationId, deviceId });
    await assertRecorded(client, registrationId, state);
  });

  test(`${protocol} over WebSocket, X.509: a self-signed device certificate is assigned`, async () => {
    const registrationId = uid(`ws-${protocol}-x509`);
    const credential = selfSignedDeviceCert(registrationId);
    await enroll(client, {
      registrationId,
      attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: credential.cert } } } },
    });

    const outcome = await register(wsX509Device(protocol, registrationId, credential));
    const state = assertAssigned(outcome, { registrationId, deviceId: registrationId });
    await assertRecorded(client, registrationId, state);
  });

  test(`${protocol} over WebSocket, wrong key: refused at once, the attempt recorded as ${protocol}`, async () => {
    const registrationId = uid(`ws-${protocol}-wrong`);
    await enroll(client, symmetricKeyEnrollment(registrationId, b64Key()));

    const outcome = await register(wsSymmetricKeyDevice(protocol, registrationId, b64Key()));
    assert.ok(outcome.error, `register() should have failed but returned ${JSON.stringify(outcome.state)}`);
    assert.ok(outcome.ms < REFUSAL_TIMEOUT_MS, `refused only after ${outcome.ms} ms: ${describeError(outcome.error)}`);
    const [attempt] = await attempts(registrationId);
    assert.equal(attempt?.transport, protocol, JSON.stringify(attempt));
    assert.equal(attempt?.reason, 'sas_signature_mismatch', JSON.stringify(attempt));
  });
}

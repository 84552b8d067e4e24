// The official Node device SDK (azure-iot-provisioning-device + -mqtt, with the symmetric-key
// and X.509 security clients), unchanged, registering devices against the real dpsd over
// MQTT/TLS: `ProvisioningDeviceClient.create('localhost:<port>', idScope, new Mqtt(), security)`,
// exactly as for Azure DPS except for the host. Enrollments are made with the service SDK.
//
// Every test uses its own ids, so tests are independent of each other and of their order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  assertRecorded,
  b64Key,
  call,
  deriveDeviceKey,
  describeError,
  enroll,
  register,
  REFUSAL_TIMEOUT_MS,
  selfSignedDeviceCert,
  serviceClient,
  symmetricKeyDevice,
  symmetricKeyEnrollment,
  uid,
  x509Device,
} from './lib/dpsd.mjs';

const client = serviceClient();

test('symmetric key, individual enrollment: assigned to a linked hub with its device id', async () => {
  const registrationId = uid('node-dev-sym');
  const deviceId = `${registrationId}-device`;
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key, b64Key(), { deviceId }));

  const state = assertAssigned(await register(symmetricKeyDevice(registrationId, key)), { registrationId, deviceId });
  await assertRecorded(client, registrationId, state);
});

test('symmetric key, individual enrollment: the secondary key works too', async () => {
  const registrationId = uid('node-dev-sym2');
  const secondaryKey = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, b64Key(), secondaryKey));

  assertAssigned(await register(symmetricKeyDevice(registrationId, secondaryKey)), {
    registrationId,
    deviceId: registrationId,
  });
});

test('symmetric key, enrollment group: a device with the derived key is assigned', async () => {
  const enrollmentGroupId = uid('node-dev-grp');
  const groupKey = b64Key(64);
  await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: b64Key(64) } },
    }),
    'createOrUpdateEnrollmentGroup',
  );

  const registrationId = uid('node-dev-grp-member');
  const deviceKey = deriveDeviceKey(groupKey, registrationId);
  const state = assertAssigned(await register(symmetricKeyDevice(registrationId, deviceKey)), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('X.509, individual enrollment: a self-signed device certificate is assigned', async () => {
  const registrationId = uid('node-dev-x509');
  const credential = selfSignedDeviceCert(registrationId);
  await enroll(client, {
    registrationId,
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: credential.cert } } } },
  });

  const state = assertAssigned(await register(x509Device(registrationId, credential)), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('a wrong key is refused promptly, and dpsd then still serves the right one', async () => {
  const registrationId = uid('node-dev-neg');
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key));

  const refused = await register(symmetricKeyDevice(registrationId, b64Key()), REFUSAL_TIMEOUT_MS);
  assert.ok(refused.error, `register() with a wrong key should have failed but returned ${JSON.stringify(refused.state)}`);
  // dpsd refuses the CONNECT (CONNACK return code 5, "not authorized"). The Node SDK's MQTT
  // transport passes mqtt.js's connect error through untranslated: a plain Error with code 5.
  // (A 401 on the response topic would have been an UnauthorizedError.)
  assert.equal(refused.error.constructor, Error, describeError(refused.error));
  assert.equal(refused.error.code, 5, describeError(refused.error));
  assert.match(refused.error.message, /^Connection refused: Not authorized$/, describeError(refused.error));
  assert.ok(refused.ms < REFUSAL_TIMEOUT_MS, `refused only after ${refused.ms} ms`);

  assertAssigned(await register(symmetricKeyDevice(registrationId, key)), { registrationId, deviceId: registrationId });
});

test('an unknown registration id is refused, a certificate nobody enrolled too', async () => {
  const unknown = await register(symmetricKeyDevice(uid('node-dev-unknown'), b64Key()), REFUSAL_TIMEOUT_MS);
  assert.ok(unknown.error, `an unenrolled device was assigned: ${JSON.stringify(unknown.state)}`);
  assert.equal(unknown.error.code, 5, describeError(unknown.error));

  const stranger = uid('node-dev-x509-unknown');
  const x509 = await register(x509Device(stranger, selfSignedDeviceCert(stranger)), REFUSAL_TIMEOUT_MS);
  assert.ok(x509.error, `an unenrolled certificate was assigned: ${JSON.stringify(x509.state)}`);
  assert.equal(x509.error.code, 5, describeError(x509.error));
});

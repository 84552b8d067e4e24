// The official Node device SDK on its AMQP transport (azure-iot-provisioning-device +
// -amqp, with the symmetric-key and X.509 security clients), unchanged, registering devices
// against the real dpsd over AMQPS: `ProvisioningDeviceClient.create('localhost:<port>',
// idScope, new Amqp(), security)`, exactly as for Azure DPS except for the host.
//
// Every test uses its own ids, so tests are independent of each other and of their order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  assertRecorded,
  amqpSymmetricKeyDevice,
  amqpX509Device,
  attempts,
  b64Key,
  call,
  deriveDeviceKey,
  describeError,
  deviceCertViaIntermediate,
  enroll,
  register,
  REFUSAL_TIMEOUT_MS,
  selfSignedDeviceCert,
  serviceClient,
  symmetricKeyEnrollment,
  uid,
} from './lib/dpsd.mjs';

const client = serviceClient();

/** The SDK reported dpsd's refusal: the AMQP transport passes rhea's error through, whose
 * condition is the one dpsd closed the connection with. */
function assertUnauthorized(outcome) {
  assert.ok(outcome.error, `register() should have failed but returned ${JSON.stringify(outcome.state)}`);
  assert.equal(outcome.error.condition, 'amqp:unauthorized-access', describeError(outcome.error));
  assert.ok(outcome.ms < REFUSAL_TIMEOUT_MS, `refused only after ${outcome.ms} ms`);
}

test('AMQP, symmetric key, individual enrollment: assigned to a linked hub with its device id', async () => {
  const registrationId = uid('amqp-sym');
  const deviceId = `${registrationId}-device`;
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key, b64Key(), { deviceId }));

  const state = assertAssigned(await register(amqpSymmetricKeyDevice(registrationId, key)), { registrationId, deviceId });
  await assertRecorded(client, registrationId, state);
});

test('AMQP, symmetric key, enrollment group: a device with the derived key is assigned', async () => {
  const enrollmentGroupId = uid('amqp-grp');
  const groupKey = b64Key(64);
  await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: b64Key(64) } },
    }),
    'createOrUpdateEnrollmentGroup',
  );

  const registrationId = uid('amqp-grp-member');
  const state = assertAssigned(await register(amqpSymmetricKeyDevice(registrationId, deriveDeviceKey(groupKey, registrationId))), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('AMQP, X.509, individual enrollment: a self-signed device certificate is assigned', async () => {
  const registrationId = uid('amqp-x509');
  const credential = selfSignedDeviceCert(registrationId);
  await enroll(client, {
    registrationId,
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: credential.cert } } } },
  });

  const state = assertAssigned(await register(amqpX509Device(registrationId, credential)), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('AMQP, X.509, enrollment group: a device whose chain runs through an intermediate is assigned', async () => {
  const registrationId = uid('amqp-x509-grp');
  const credential = deviceCertViaIntermediate(registrationId);
  await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: uid('amqp-x509-group'),
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: credential.rootPem } } } },
    }),
    'createOrUpdateEnrollmentGroup',
  );

  const state = assertAssigned(await register(amqpX509Device(registrationId, credential)), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('AMQP, a wrong key is refused as unauthorized, the reason is in the attempts, and the right key still works', async () => {
  const registrationId = uid('amqp-neg');
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key));

  assertUnauthorized(await register(amqpSymmetricKeyDevice(registrationId, b64Key()), REFUSAL_TIMEOUT_MS));
  const recorded = await attempts(registrationId);
  assert.deepEqual(
    recorded.map((a) => [a.transport, a.reason]),
    [['amqp', 'sas_signature_mismatch']],
    JSON.stringify(recorded),
  );

  assertAssigned(await register(amqpSymmetricKeyDevice(registrationId, key)), { registrationId, deviceId: registrationId });
});

test('AMQP, a certificate from an unknown CA is refused as unauthorized, the reason is in the attempts', async () => {
  const registrationId = uid('amqp-x509-stranger');
  const refused = await register(amqpX509Device(registrationId, deviceCertViaIntermediate(registrationId)), REFUSAL_TIMEOUT_MS);
  assertUnauthorized(refused);
  const recorded = await attempts(registrationId);
  assert.equal(recorded.length, 1, JSON.stringify(recorded));
  assert.equal(recorded[0].transport, 'amqp');
  assert.equal(recorded[0].reason, 'unknown_ca', JSON.stringify(recorded));
});

// The official Node device SDK on its HTTP transport (azure-iot-provisioning-device + -http,
// with the symmetric-key and X.509 security clients), unchanged, registering devices against
// the real dpsd over HTTPS on the service API's listener:
// `ProvisioningDeviceClient.create('localhost:<port>', idScope, new Http(), security)`, exactly
// as for Azure DPS except for the host. The transport sends PUT .../register, then polls
// GET .../operations/{operationId} (with a `{}` body) every 2 s until the answer is final.
//
// Every test uses its own ids, so tests are independent of each other and of their order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertAssigned,
  assertRecorded,
  attempts,
  b64Key,
  call,
  deriveDeviceKey,
  describeError,
  deviceCertViaIntermediate,
  enroll,
  httpsSymmetricKeyDevice,
  httpsX509Device,
  register,
  REFUSAL_TIMEOUT_MS,
  selfSignedDeviceCert,
  serviceClient,
  symmetricKeyEnrollment,
  uid,
} from './lib/dpsd.mjs';

const client = serviceClient();

/** The SDK reported dpsd's 401: the HTTP transport turns it into an UnauthorizedError that
 * carries the response, whose body is DPS's generic 401002 error. */
function assertUnauthorized(outcome) {
  assert.ok(outcome.error, `register() should have failed but returned ${JSON.stringify(outcome.state)}`);
  assert.equal(outcome.error.name, 'UnauthorizedError', describeError(outcome.error));
  assert.equal(outcome.error.response?.statusCode, 401, describeError(outcome.error));
  assert.equal(JSON.parse(outcome.error.responseBody).errorCode, 401002, describeError(outcome.error));
  assert.ok(outcome.ms < REFUSAL_TIMEOUT_MS, `refused only after ${outcome.ms} ms`);
}

test('HTTPS, symmetric key, individual enrollment: assigned to a linked hub with its device id', async () => {
  const registrationId = uid('https-sym');
  const deviceId = `${registrationId}-device`;
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key, b64Key(), { deviceId }));

  const state = assertAssigned(await register(httpsSymmetricKeyDevice(registrationId, key)), { registrationId, deviceId });
  await assertRecorded(client, registrationId, state);
});

test('HTTPS, symmetric key, enrollment group: a device with the derived key is assigned', async () => {
  const enrollmentGroupId = uid('https-grp');
  const groupKey = b64Key(64);
  await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: b64Key(64) } },
    }),
    'createOrUpdateEnrollmentGroup',
  );

  const registrationId = uid('https-grp-member');
  const device = httpsSymmetricKeyDevice(registrationId, deriveDeviceKey(groupKey, registrationId));
  const state = assertAssigned(await register(device), { registrationId, deviceId: registrationId });
  assert.equal(state.symmetricKey?.enrollmentGroupId, enrollmentGroupId, JSON.stringify(state));
  await assertRecorded(client, registrationId, state);
});

test('HTTPS, X.509, individual enrollment: a self-signed device certificate is assigned', async () => {
  const registrationId = uid('https-x509');
  const credential = selfSignedDeviceCert(registrationId);
  await enroll(client, {
    registrationId,
    attestation: { type: 'x509', x509: { clientCertificates: { primary: { certificate: credential.cert } } } },
  });

  const state = assertAssigned(await register(httpsX509Device(registrationId, credential)), {
    registrationId,
    deviceId: registrationId,
  });
  await assertRecorded(client, registrationId, state);
});

test('HTTPS, X.509, enrollment group: a device whose chain runs through an intermediate is assigned', async () => {
  const registrationId = uid('https-x509-grp');
  const credential = deviceCertViaIntermediate(registrationId);
  const enrollmentGroupId = uid('https-x509-group');
  await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: credential.rootPem } } } },
    }),
    'createOrUpdateEnrollmentGroup',
  );

  const state = assertAssigned(await register(httpsX509Device(registrationId, credential)), {
    registrationId,
    deviceId: registrationId,
  });
  assert.equal(state.x509?.enrollmentGroupId, enrollmentGroupId, JSON.stringify(state));
  await assertRecorded(client, registrationId, state);
});

test('HTTPS, a wrong key is refused as unauthorized, the reason is in the attempts, and the right key still works', async () => {
  const registrationId = uid('https-neg');
  const key = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, key));

  assertUnauthorized(await register(httpsSymmetricKeyDevice(registrationId, b64Key()), REFUSAL_TIMEOUT_MS));
  const recorded = await attempts(registrationId);
  assert.deepEqual(
    recorded.map((a) => [a.transport, a.reason]),
    [['https', 'sas_signature_mismatch']],
    JSON.stringify(recorded),
  );

  assertAssigned(await register(httpsSymmetricKeyDevice(registrationId, key)), { registrationId, deviceId: registrationId });
});

test('HTTPS, a certificate from an unknown CA is refused as unauthorized, the reason is in the attempts', async () => {
  const registrationId = uid('https-x509-stranger');
  const refused = await register(httpsX509Device(registrationId, deviceCertViaIntermediate(registrationId)), REFUSAL_TIMEOUT_MS);
  assertUnauthorized(refused);
  const recorded = await attempts(registrationId);
  assert.deepEqual(
    recorded.map((a) => [a.transport, a.reason]),
    [['https', 'unknown_ca']],
    JSON.stringify(recorded),
  );
});

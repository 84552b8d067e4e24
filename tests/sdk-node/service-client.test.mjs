// The official Node service SDK (azure-iot-provisioning-service), unchanged, managing
// enrollments on the real dpsd: built with `ProvisioningServiceClient.fromConnectionString`
// from the connection string dpsd wrote, exactly as a user builds it for Azure DPS.
//
// Every test uses its own ids, so tests are independent of each other and of their order (and
// of the other test files, which node --test may run at the same time).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  b64Key,
  call,
  enroll,
  hostNameHasPort,
  rejectionOf,
  serviceClient,
  serviceHostName,
  SERVICE_TIMEOUT_MS,
  symmetricKeyEnrollment,
  uid,
} from './lib/dpsd.mjs';

const client = serviceClient();

test('the connection string names dpsd on localhost', (t) => {
  assert.match(serviceHostName ?? '', /^localhost(:\d+)?$/);
  t.diagnostic(
    hostNameHasPort
      ? `HostName ${serviceHostName}: the SDK's requests are dialed through HostWithPortAgent (lib/dpsd.mjs)`
      : `HostName ${serviceHostName}: the SDK dials port 443 on its own, no agent installed`,
  );
});

test('individual symmetric-key enrollment: create, read back, update with its etag', async () => {
  const registrationId = uid('node-svc');
  const primaryKey = b64Key();
  const secondaryKey = b64Key();

  const created = await enroll(
    client,
    symmetricKeyEnrollment(registrationId, primaryKey, secondaryKey, { deviceId: `${registrationId}-dev` }),
  );
  assert.equal(created.registrationId, registrationId);
  assert.equal(created.deviceId, `${registrationId}-dev`);
  assert.equal(created.attestation.type, 'symmetricKey');
  assert.equal(created.provisioningStatus, 'enabled');
  assert.ok(created.etag, 'the created enrollment has an etag');
  assert.ok(created.createdDateTimeUtc, 'the created enrollment has createdDateTimeUtc');

  const { responseBody: read, httpResponse } = await call(
    client.getIndividualEnrollment(registrationId),
    'getIndividualEnrollment',
  );
  assert.equal(httpResponse.statusCode, 200);
  assert.equal(read.registrationId, registrationId);
  assert.equal(read.deviceId, `${registrationId}-dev`);
  assert.equal(read.attestation.type, 'symmetricKey');
  assert.equal(read.etag, created.etag);

  // The SDK sends `If-Match: <etag>` when the enrollment carries one.
  const updated = await enroll(client, { ...read, provisioningStatus: 'disabled' });
  assert.equal(updated.provisioningStatus, 'disabled');
  assert.notEqual(updated.etag, created.etag, 'an update changes the etag');

  // The etag read before the update is stale now: dpsd answers 412, the SDK's InvalidEtagError.
  const stale = await rejectionOf(
    client.createOrUpdateIndividualEnrollment({ ...read, provisioningStatus: 'enabled' }),
    SERVICE_TIMEOUT_MS,
    'createOrUpdateIndividualEnrollment with a stale etag',
  );
  assert.equal(stale.name, 'InvalidEtagError', `${stale.name}: ${stale.message}`);
  assert.equal(stale.response?.statusCode, 412);

  await call(client.deleteIndividualEnrollment(registrationId), 'deleteIndividualEnrollment');
});

test('attestation mechanism of an individual enrollment returns its keys', async () => {
  const registrationId = uid('node-svc-att');
  const primaryKey = b64Key();
  const secondaryKey = b64Key();
  await enroll(client, symmetricKeyEnrollment(registrationId, primaryKey, secondaryKey));

  const { responseBody: mechanism } = await call(
    client.getIndividualEnrollmentAttestationMechanism(registrationId),
    'getIndividualEnrollmentAttestationMechanism',
  );
  assert.equal(mechanism.type, 'symmetricKey');
  assert.equal(mechanism.symmetricKey.primaryKey, primaryKey);
  assert.equal(mechanism.symmetricKey.secondaryKey, secondaryKey);

  await call(client.deleteIndividualEnrollment(registrationId), 'deleteIndividualEnrollment');
});

test('delete with the etag: a stale etag is refused, the current one deletes', async () => {
  const registrationId = uid('node-svc-del');
  const first = await enroll(client, symmetricKeyEnrollment(registrationId, b64Key()));
  const second = await enroll(client, { ...first, provisioningStatus: 'disabled' });
  assert.notEqual(second.etag, first.etag);

  // deleteIndividualEnrollment(enrollment) sends `If-Match: enrollment.etag`.
  const refused = await rejectionOf(
    client.deleteIndividualEnrollment(first),
    SERVICE_TIMEOUT_MS,
    'deleteIndividualEnrollment with a stale etag',
  );
  assert.equal(refused.name, 'InvalidEtagError', `${refused.name}: ${refused.message}`);
  assert.equal(refused.response?.statusCode, 412);
  // Still there.
  await call(client.getIndividualEnrollment(registrationId), 'getIndividualEnrollment');

  await call(client.deleteIndividualEnrollment(second), 'deleteIndividualEnrollment(current etag)');

  const gone = await rejectionOf(
    client.getIndividualEnrollment(registrationId),
    SERVICE_TIMEOUT_MS,
    'getIndividualEnrollment after delete',
  );
  assert.equal(gone.response?.statusCode, 404, `${gone.name}: ${gone.message}`);
});

test('enrollment group (symmetric key): create, read back, attestation mechanism, delete', async () => {
  const enrollmentGroupId = uid('node-svc-grp');
  const primaryKey = b64Key(64);
  const secondaryKey = b64Key(64);

  const { responseBody: created } = await call(
    client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
    }),
    'createOrUpdateEnrollmentGroup',
  );
  assert.equal(created.enrollmentGroupId, enrollmentGroupId);
  assert.equal(created.attestation.type, 'symmetricKey');
  assert.equal(created.provisioningStatus, 'enabled');
  assert.ok(created.etag);

  const { responseBody: read } = await call(client.getEnrollmentGroup(enrollmentGroupId), 'getEnrollmentGroup');
  assert.equal(read.enrollmentGroupId, enrollmentGroupId);
  assert.equal(read.etag, created.etag);

  // The SDK calls POST /enrollmentgroups/{id}/attestationmechanism (lower-case "g").
  const { responseBody: mechanism } = await call(
    client.getEnrollmentGroupAttestationMechanism(enrollmentGroupId),
    'getEnrollmentGroupAttestationMechanism',
  );
  assert.equal(mechanism.type, 'symmetricKey');
  assert.equal(mechanism.symmetricKey.primaryKey, primaryKey);
  assert.equal(mechanism.symmetricKey.secondaryKey, secondaryKey);

  await call(client.deleteEnrollmentGroup(read), 'deleteEnrollmentGroup(with etag)');
  const gone = await rejectionOf(
    client.getEnrollmentGroup(enrollmentGroupId),
    SERVICE_TIMEOUT_MS,
    'getEnrollmentGroup after delete',
  );
  assert.equal(gone.response?.statusCode, 404, `${gone.name}: ${gone.message}`);
});

test('individual enrollment query pages with hasMoreResults / next()', async (t) => {
  const prefix = uid('node-svc-q');
  const ids = Array.from({ length: 5 }, (_, i) => `${prefix}-${i}`);
  for (const id of ids) {
    await enroll(client, symmetricKeyEnrollment(id, b64Key()));
  }
  const pageSize = 2;

  /** Reads the whole query with `nextPage(query)`; checks every page, returns the ids seen. */
  async function readAll(nextPage) {
    const query = client.createIndividualEnrollmentQuery({ query: 'SELECT * FROM enrollments' }, pageSize);
    const seen = new Set();
    let pages = 0;
    while (query.hasMoreResults) {
      assert.ok(pages < 10_000, 'the query never ends');
      const { page, httpResponse } = await call(nextPage(query), `query page ${pages + 1}`);
      pages += 1;
      assert.ok(Array.isArray(page), 'a page is a JSON array');
      assert.ok(page.length <= pageSize, `page ${pages} has ${page.length} items, more than ${pageSize}`);
      assert.equal(httpResponse.headers['x-ms-item-type'], 'Enrollment');
      for (const enrollment of page) {
        assert.ok(!seen.has(enrollment.registrationId), `${enrollment.registrationId} on two pages`);
        seen.add(enrollment.registrationId);
      }
    }
    assert.ok(pages >= Math.ceil(ids.length / pageSize), `only ${pages} page(s) for at least ${ids.length} items`);
    for (const id of ids) assert.ok(seen.has(id), `${id} was on no page`);
  }

  // The SDK's paging loop as its samples write it: next(callback) sends the continuation token
  // of the previous page (x-ms-continuation) and hasMoreResults turns false on the last page.
  await t.test('next(callback)', () =>
    readAll(
      (query) =>
        new Promise((resolve, reject) => {
          query.next((err, page, httpResponse) => (err ? reject(err) : resolve({ page, httpResponse })));
        }),
    ),
  );
  // The promise form must be given the token: a bare `query.next()` (no callback, no token)
  // passes `undefined` as the token (Query.next in azure-iot-provisioning-service 1.11.2), so it
  // returns the first page again and again; that is the SDK's doing, not the server's.
  await t.test('next(query.continuationToken)', () =>
    readAll(async (query) => {
      const { responseBody, httpResponse } = await query.next(query.continuationToken);
      return { page: responseBody, httpResponse };
    }),
  );

  for (const id of ids) {
    await call(client.deleteIndividualEnrollment(id), `deleteIndividualEnrollment(${id})`);
  }
});

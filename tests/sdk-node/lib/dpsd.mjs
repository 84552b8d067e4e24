// What every test file needs to reach the dpsd that run.sh started: its settings (from the
// environment run.sh exports), SDK clients built exactly as a user builds them, a bound for
// every await, ids, keys, and an X.509 test certificate.
//
// The SDK packages are the official ones, unchanged (versions pinned in package.json).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The SDK packages are CommonJS: imported whole, as Node lets ESM import any CJS module.
import iotCommon from 'azure-iot-common';
import provisioningDevice from 'azure-iot-provisioning-device';
import provisioningDeviceAmqp from 'azure-iot-provisioning-device-amqp';
import provisioningDeviceHttp from 'azure-iot-provisioning-device-http';
import provisioningDeviceMqtt from 'azure-iot-provisioning-device-mqtt';
import provisioningService from 'azure-iot-provisioning-service';
import securitySymmetricKey from 'azure-iot-security-symmetric-key';
import securityX509 from 'azure-iot-security-x509';

const { ProvisioningDeviceClient } = provisioningDevice;
const { Mqtt, MqttWs } = provisioningDeviceMqtt;
const { Amqp, AmqpWs } = provisioningDeviceAmqp;
const { Http } = provisioningDeviceHttp;
const { ConnectionString, SharedAccessSignature } = iotCommon;
const { ProvisioningServiceClient } = provisioningService;
const { SymmetricKeySecurityClient } = securitySymmetricKey;
const { X509Security } = securityX509;

// ---------------------------------------------------------------------------------------------
// settings (exported by run.sh; DPS_TEST_* so that dpsd, which rejects unknown DPSD_* variables,
// never sees them)

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/sdk-node/run.sh`);
  }
  return value;
}

export const dps = Object.freeze({
  /** The owner-policy connection string dpsd wrote to <data>/service-connection-string. */
  connectionString: required('DPS_TEST_CONNECTION_STRING'),
  /** The ID scope dpsd wrote to <data>/id-scope. */
  idScope: required('DPS_TEST_ID_SCOPE'),
  /** What a device passes as provisioningHost: `localhost:<mqtt port>`. */
  mqttHost: required('DPS_TEST_MQTT_HOST'),
  /** The same for the AMQP transport: `localhost:<amqp port>`. */
  amqpHost: required('DPS_TEST_AMQP_HOST'),
  /** The same for the HTTP transport: the service API's `localhost:<port>` (one listener
   * serves both, as DPS's port 443 does). */
  httpsHost: required('DPS_TEST_HTTPS_HOST'),
  /** The IoT hubs linked in dpsd's config file (devices must be assigned to one of them). */
  linkedHubs: required('DPS_TEST_LINKED_HUBS').split(','),
});

// ---------------------------------------------------------------------------------------------
// bounds

// A registration that works takes about a second (one register publish, dpsd's retry-after,
// one poll). The SDK gives each request 30 s (ProvisioningDeviceConstants.defaultTimeoutInterval)
// before it fails on its own; this bound lies past that, so a hang is reported, never waited out.
export const REGISTER_TIMEOUT_MS = 40_000;
// A refused registration must be reported by the server, well before that SDK timeout.
export const REFUSAL_TIMEOUT_MS = 15_000;
// One service API call.
export const SERVICE_TIMEOUT_MS = 10_000;

/** `promise`, or a rejection naming `what` once `ms` have passed (the timer never outlives it). */
export function within(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** A service API call, bounded. */
export function call(promise, what) {
  return within(promise, SERVICE_TIMEOUT_MS, what);
}

/** The rejection of `promise` (fails when it resolves); bounded by `ms`. */
export async function rejectionOf(promise, ms, what) {
  const outcome = await within(
    promise.then(
      (value) => ({ value }),
      (error) => ({ error }),
    ),
    ms,
    what,
  );
  if (!('error' in outcome)) {
    throw new Error(`${what} should have failed but returned ${JSON.stringify(outcome.value)}`);
  }
  return outcome.error;
}

// ---------------------------------------------------------------------------------------------
// ids and keys

/** A registration / group id unique to this run (lower case, as DPS ids usually are). */
export function uid(prefix) {
  return `${prefix}-${randomUUID().replaceAll('-', '').slice(0, 12)}`;
}

export function b64Key(bytes = 32) {
  return randomBytes(bytes).toString('base64');
}

/** The device key of an enrollment-group device, as DPS documents it:
 * base64(HMAC-SHA256(base64decode(group key), registration id)). */
export function deriveDeviceKey(groupKey, registrationId) {
  return createHmac('sha256', Buffer.from(groupKey, 'base64'))
    .update(registrationId, 'utf8')
    .digest('base64');
}

// ---------------------------------------------------------------------------------------------
// service client

// The Node service SDK hands the connection string's HostName to `https.request` as `host`
// (azure-iot-http-base Http.buildRequest) and never sets a port, so Node resolves the whole
// `localhost:<port>` as a DNS name (getaddrinfo ENOTFOUND): the SDK can only reach a service on
// port 443, as real DPS always is. When run.sh gives dpsd a port in its host name (the default,
// any free port), this agent only splits that `host` into the host and port to dial. The
// request itself is the SDK's, byte for byte: path, `Host: localhost:<port>` header and the SAS
// token signed for `localhost:<port>`. With DPS_TEST_API_PORT=443 (host name `localhost`) it is
// not installed and nothing stands between the SDK and dpsd.
class HostWithPortAgent extends https.Agent {
  createConnection(options, callback) {
    const m = /^(?<host>[^:\[\]]+):(?<port>\d+)$/.exec(options.host ?? '');
    if (m) {
      const { host, port } = m.groups;
      options = { ...options, host, port: Number(port), servername: host };
    }
    return super.createConnection(options, callback);
  }
}

export const serviceHostName = /(?:^|;)HostName=([^;]+)/i.exec(dps.connectionString)?.[1];
export const hostNameHasPort = /:\d+$/.test(serviceHostName ?? '');
if (hostNameHasPort) {
  https.globalAgent = new HostWithPortAgent();
}

/** The owner-policy service client, as `fromConnectionString` builds it. */
export function serviceClient() {
  return ProvisioningServiceClient.fromConnectionString(dps.connectionString);
}

/** A symmetric-key individual enrollment body. */
export function symmetricKeyEnrollment(registrationId, primaryKey, secondaryKey = b64Key(), extra = {}) {
  return {
    registrationId,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
    ...extra,
  };
}

/** Creates `enrollment` through the service SDK and returns what dpsd answered. */
export async function enroll(client, enrollment) {
  const { responseBody } = await call(
    client.createOrUpdateIndividualEnrollment(enrollment),
    `createOrUpdateIndividualEnrollment(${enrollment.registrationId})`,
  );
  return responseBody;
}

// ---------------------------------------------------------------------------------------------
// devices

/** A device client built as a user builds one: only the host points at dpsd; dpsd's CA is
 * trusted through NODE_EXTRA_CA_CERTS (the MQTT transport has no API to pass one). */
export function deviceClient(security) {
  return ProvisioningDeviceClient.create(dps.mqttHost, dps.idScope, new Mqtt(), security);
}

export function symmetricKeyDevice(registrationId, key) {
  return deviceClient(new SymmetricKeySecurityClient(registrationId, key));
}

export function x509Device(registrationId, credential) {
  return deviceClient(new X509Security(registrationId, credential));
}

/** A device client on the AMQP transport, built as a user builds one (AMQPS, port in the host). */
export function amqpDeviceClient(security) {
  return ProvisioningDeviceClient.create(dps.amqpHost, dps.idScope, new Amqp(), security);
}

export function amqpSymmetricKeyDevice(registrationId, key) {
  return amqpDeviceClient(new SymmetricKeySecurityClient(registrationId, key));
}

export function amqpX509Device(registrationId, credential) {
  return amqpDeviceClient(new X509Security(registrationId, credential));
}

/** A device client on the HTTP transport, built as a user builds one. The transport hands
 * `localhost:<port>` to `https.request` as `host`, like the service SDK, so the same agent (see
 * HostWithPortAgent) splits it when the port is not 443; the client certificate of an X.509
 * device goes into the request options (`cert`, `key`), which that agent passes on untouched. */
export function httpsDeviceClient(security) {
  return ProvisioningDeviceClient.create(dps.httpsHost, dps.idScope, new Http(), security);
}

export function httpsSymmetricKeyDevice(registrationId, key) {
  return httpsDeviceClient(new SymmetricKeySecurityClient(registrationId, key));
}

export function httpsX509Device(registrationId, credential) {
  return httpsDeviceClient(new X509Security(registrationId, credential));
}

/** A device client on MQTT (`'mqtt'`) or AMQP (`'amqp'`) over WebSocket, built as a user builds
 * one. These transports dial `wss://{host}:443/$iothub/websocket` whatever the host says, so the
 * host is the service API's `localhost` and run.sh must put that listener on 443
 * (DPS_TEST_API_PORT=443). */
export function wsDeviceClient(protocol, security) {
  assert.equal(dps.httpsHost, 'localhost', 'the WebSocket transports dial port 443: run with DPS_TEST_API_PORT=443');
  const transport = protocol === 'mqtt' ? new MqttWs() : new AmqpWs();
  return ProvisioningDeviceClient.create(dps.httpsHost, dps.idScope, transport, security);
}

export function wsSymmetricKeyDevice(protocol, registrationId, key) {
  return wsDeviceClient(protocol, new SymmetricKeySecurityClient(registrationId, key));
}

export function wsX509Device(protocol, registrationId, credential) {
  return wsDeviceClient(protocol, new X509Security(registrationId, credential));
}

/** The failed attempts dpsd recorded for `registrationId` (`GET /registrations/{id}/attempts`,
 * dpsd's diagnostics; not part of DPS, so not in the service SDK), signed with the owner
 * policy's key as the service SDK signs its requests. */
export async function attempts(registrationId) {
  const cs = ConnectionString.parse(dps.connectionString);
  const expiry = Math.ceil(Date.now() / 1000) + 600;
  const sas = SharedAccessSignature.create(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, expiry);
  const body = await within(
    new Promise((resolve, reject) => {
      const request = https.request(
        {
          host: cs.HostName,
          path: `/registrations/${encodeURIComponent(registrationId)}/attempts?api-version=2021-10-01`,
          headers: { Authorization: sas.toString(), Accept: 'application/json' },
        },
        (response) => {
          let text = '';
          response.setEncoding('utf8');
          response.on('data', (chunk) => (text += chunk));
          response.on('end', () =>
            response.statusCode === 200
              ? resolve(text)
              : reject(new Error(`attempts: HTTP ${response.statusCode}: ${text}`)),
          );
        },
      );
      request.on('error', reject);
      request.end();
    }),
    SERVICE_TIMEOUT_MS,
    `attempts(${registrationId})`,
  );
  return JSON.parse(body).attempts;
}

/** `device.register()`, bounded: resolves to { state, error, ms }. On a timeout the
 * registration is cancelled (so no MQTT connection outlives the test) and the test fails. */
export async function register(device, ms = REGISTER_TIMEOUT_MS) {
  const started = Date.now();
  try {
    const state = await within(device.register(), ms, 'register()');
    return { state, error: null, ms: Date.now() - started };
  } catch (error) {
    if (/did not settle/.test(error.message)) {
      await within(device.cancel(), 5_000, 'cancel()').catch(() => {});
      throw error;
    }
    return { state: null, error, ms: Date.now() - started };
  }
}

/** register() succeeded as the SDK reports it: assigned to a linked hub as `deviceId`;
 * returns the registration state. */
export function assertAssigned(outcome, { registrationId, deviceId }) {
  assert.equal(outcome.error, null, `register() failed after ${outcome.ms} ms: ${describeError(outcome.error)}`);
  const state = outcome.state;
  assert.ok(state, 'register() resolved without a registration state');
  assert.equal(state.status, 'assigned', JSON.stringify(state));
  assert.equal(state.registrationId, registrationId, JSON.stringify(state));
  assert.equal(state.deviceId, deviceId, JSON.stringify(state));
  assert.ok(dps.linkedHubs.includes(state.assignedHub), `assigned to ${state.assignedHub}, not a linked hub`);
  return state;
}

/** The registration record dpsd keeps (read with the service SDK's `client`) agrees with what
 * the device was told. */
export async function assertRecorded(client, registrationId, state) {
  const { responseBody: record } = await call(
    client.getDeviceRegistrationState(registrationId),
    'getDeviceRegistrationState',
  );
  assert.equal(record.registrationId, registrationId);
  assert.equal(record.status, 'assigned');
  assert.equal(record.assignedHub, state.assignedHub);
  assert.equal(record.deviceId, state.deviceId);
}

export function describeError(error) {
  if (!error) return 'no error';
  const fields = { name: error.name, code: error.code, result: error.result };
  return `${error.constructor?.name}: ${error.message} ${JSON.stringify(fields)}`;
}

// ---------------------------------------------------------------------------------------------
// X.509 (node:crypto cannot issue certificates, so openssl makes them)

/** Runs openssl with `args` in `dir` (bounded). */
function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** A root CA, an intermediate CA it signed, and a device certificate (CN = registration id,
 * clientAuth) the intermediate signed: `{ rootPem, cert, key }` where `cert` is the chain the
 * device presents (its certificate, then the intermediate's) and `rootPem` what a group
 * enrolls. */
export function deviceCertViaIntermediate(registrationId) {
  const dir = mkdtempSync(join(tmpdir(), 'dps-node-chain-'));
  try {
    const ca = 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n';
    const leaf = 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n';
    writeFileSync(join(dir, 'ca.ext'), ca);
    writeFileSync(join(dir, 'leaf.ext'), leaf);
    openssl(dir, ['req', '-x509', '-new', ...EC_KEY, '-keyout', 'root.key', '-out', 'root.pem',
      '-subj', `/CN=${registrationId}-root`, '-days', '30', '-sha256',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    openssl(dir, ['req', '-new', ...EC_KEY, '-keyout', 'int.key', '-out', 'int.csr', '-subj', `/CN=${registrationId}-intermediate`]);
    openssl(dir, ['x509', '-req', '-in', 'int.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-CAcreateserial',
      '-out', 'int.pem', '-days', '30', '-sha256', '-extfile', 'ca.ext']);
    openssl(dir, ['req', '-new', ...EC_KEY, '-keyout', 'device.key', '-out', 'device.csr', '-subj', `/CN=${registrationId}`]);
    openssl(dir, ['x509', '-req', '-in', 'device.csr', '-CA', 'int.pem', '-CAkey', 'int.key', '-CAcreateserial',
      '-out', 'device.pem', '-days', '30', '-sha256', '-extfile', 'leaf.ext']);
    const read = (name) => readFileSync(join(dir, name), 'utf8');
    return { rootPem: read('root.pem'), cert: read('device.pem') + read('int.pem'), key: read('device.key') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A self-signed EC P-256 device certificate with CN = registration id and the clientAuth EKU,
 * as the { cert, key } PEM pair X509Security takes. */
export function selfSignedDeviceCert(registrationId) {
  const dir = mkdtempSync(join(tmpdir(), 'dps-node-x509-'));
  try {
    const keyFile = join(dir, 'device.key');
    const certFile = join(dir, 'device.pem');
    execFileSync(
      'openssl',
      [
        'req', '-x509', '-new',
        '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
        '-keyout', keyFile, '-out', certFile,
        '-subj', `/CN=${registrationId}`, '-days', '30', '-sha256',
        '-addext', 'basicConstraints=critical,CA:FALSE',
        '-addext', 'keyUsage=critical,digitalSignature',
        '-addext', 'extendedKeyUsage=clientAuth',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 },
    );
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

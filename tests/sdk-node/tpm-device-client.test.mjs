// The official Node TPM security client (azure-iot-security-tpm over tss.js), unchanged, on the
// official HTTP and AMQP device transports, registering a TPM device against the real dpsd. The TPM is a
// real software TPM (Debian's swtpm); tss.js speaks the Microsoft TPM simulator's TCP protocol,
// which lib/tpm-bridge.py translates to swtpm's raw TPM socket. The client creates its EK and
// SRK in that TPM, the EK is enrolled through the service SDK, and
// `ProvisioningDeviceClient.register()` does the rest as against Azure DPS: the challenge (the
// HTTP 401, or the AMQP SASL `TPM` mechanism), ActivateCredential + Import of the blob, the
// TPM-signed SAS token, the polls, and the import of the hub key of
// `registrationState.tpm.authenticationKey`.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import securityTpm from 'azure-iot-security-tpm';
import tss from 'tss.js';

import {
  assertAssigned,
  amqpDeviceClient,
  assertRecorded,
  attempts,
  enroll,
  httpsDeviceClient,
  register,
  serviceClient,
  within,
} from './lib/dpsd.mjs';

const { TpmSecurityClient } = securityTpm;
const { Tpm } = tss;

const here = dirname(fileURLToPath(import.meta.url));
/** How long swtpm and the bridge may take to listen. */
const START_TIMEOUT_MS = 10_000;

const client = serviceClient();
const children = [];
const dirs = [];
after(() => {
  for (const child of children) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A port p with p and p + 1 free on loopback (swtpm and the simulator protocol both use a
 * second port next to the first). */
async function freePortPair() {
  const bind = (port) =>
    new Promise((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(null));
      server.listen(port, '127.0.0.1', () => resolve(server));
    });
  const close = (server) => new Promise((resolve) => server.close(resolve));
  for (;;) {
    const first = await bind(0);
    const port = first.address().port;
    const second = port < 65535 ? await bind(port + 1) : null;
    await close(first);
    if (second) {
      await close(second);
      return port;
    }
  }
}

/** Resolves once `port` accepts a connection, polling until `ms` passed. */
async function listening(port, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
}

/** Starts a child process whose life the test owns. */
function start(command, args) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return child;
}

/** A fresh swtpm behind the bridge: a `Tpm` of tss.js that talks to it, as a simulator. */
async function softwareTpm() {
  const dir = mkdtempSync(join(tmpdir(), 'dpsd-swtpm-'));
  dirs.push(dir);
  const swtpmPort = await freePortPair();
  start('swtpm', [
    'socket', '--tpm2', '--flags', 'not-need-init,startup-clear',
    '--server', `type=tcp,port=${swtpmPort},bindaddr=127.0.0.1`,
    '--ctrl', `type=tcp,port=${swtpmPort + 1},bindaddr=127.0.0.1`,
    '--tpmstate', `dir=${dir}`,
  ]);
  await listening(swtpmPort, START_TIMEOUT_MS);
  const bridgePort = await freePortPair();
  const bridge = start('python3', [join(here, 'lib', 'tpm-bridge.py'), String(bridgePort), String(swtpmPort)]);
  await within(
    new Promise((resolve, reject) => {
      bridge.stdout.once('data', resolve);
      bridge.once('exit', (code) => reject(new Error(`tpm-bridge.py exited with ${code}`)));
    }),
    START_TIMEOUT_MS,
    'tpm-bridge.py ready',
  );
  return new Tpm(true, '127.0.0.1', bridgePort);
}

/** A callback API of the TPM client as a promise. */
function promised(fn) {
  return new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
}

for (const [name, transport, deviceClientOf] of [
  ['HTTPS', 'https', httpsDeviceClient],
  ['AMQP', 'amqp', amqpDeviceClient],
]) {
  test(`${name}, TPM (official Node TPM client, swtpm): challenged, activated, assigned, hub key imported`, async () => {
    const security = new TpmSecurityClient(undefined, await softwareTpm());
    const ek = await within(promised((cb) => security.getEndorsementKey(cb)), 30_000, 'getEndorsementKey');
    const registrationId = await within(promised((cb) => security.getRegistrationId(cb)), 30_000, 'getRegistrationId');
    await enroll(client, {
      registrationId,
      attestation: { type: 'tpm', tpm: { endorsementKey: ek.toString('base64') } },
    });

    // The TPM registration resolves to the whole RegistrationOperationStatus (it imported the
    // hub key of its registrationState.tpm.authenticationKey before), not to the state alone.
    const outcome = await register(deviceClientOf(security));
    assert.equal(outcome.state?.status, 'assigned', JSON.stringify(outcome.state));
    const registered = { ...outcome, state: outcome.state.registrationState };
    const state = assertAssigned(registered, { registrationId, deviceId: registrationId });
    assert.ok(state.tpm?.authenticationKey, JSON.stringify(state));
    await assertRecorded(client, registrationId, state);
    assert.deepEqual(await attempts(registrationId), []);
  });
}

// HTTPS only: over AMQP the SASL `TPM` exchange of such a device ends with outcome `auth`
// (crates/dps-amqp/tests/tpm.rs checks that and the recorded reason), on which this SDK's AMQP
// transport does not settle register() (it writes after the socket ended and waits).
test('HTTPS, TPM: a TPM whose EK is not the enrolled one is refused with the reason recorded', async () => {
  const enrolled = new TpmSecurityClient(undefined, await softwareTpm());
  const otherEk = await within(promised((cb) => enrolled.getEndorsementKey(cb)), 30_000, 'getEndorsementKey');
  const security = new TpmSecurityClient(undefined, await softwareTpm());
  const registrationId = await within(promised((cb) => security.getRegistrationId(cb)), 30_000, 'getRegistrationId');
  await enroll(client, {
    registrationId,
    attestation: { type: 'tpm', tpm: { endorsementKey: otherEk.toString('base64') } },
  });

  const outcome = await register(httpsDeviceClient(security));
  assert.ok(outcome.error, `register() should have failed but returned ${JSON.stringify(outcome.state)}`);
  const recorded = await attempts(registrationId);
  assert.equal(recorded.length, 1, JSON.stringify(recorded));
  assert.equal(recorded[0].transport, 'https', JSON.stringify(recorded));
  assert.equal(recorded[0].reason, 'tpm_endorsement_key_mismatch', JSON.stringify(recorded));
});

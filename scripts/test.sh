#!/usr/bin/env bash
# The project's test command (README "Run the tests"). On a fresh machine it installs what the
# tests need, builds once, checks deploy/, runs every Rust suite, then the Azure SDK
# compatibility tests (the official Python and Node.js SDKs, unchanged) against the real dpsd
# binary, and finally runs every fuzz target for a short bounded time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, installed when missing after one `apt-get update`: Chromium and its
# WebDriver for the portal's browser tests; prometheus (the server the metrics tests start,
# and promtool for deploy/prometheus); systemd (systemd-analyze for deploy/systemd); PyYAML
# for the deploy/ checks; libssl-dev and gcc to build python-qpid-proton.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
# mosquitto: the broker dps-loadtest's MQTT baseline test starts (tests/extras.rs).
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
# OpenSSL's headers and a C compiler: pip builds python-qpid-proton (tests/sdk) from source.
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v gcc >/dev/null || missing+=(gcc)
# A software TPM and the TPM2 tools: the TPM attestation tests (dps-attest's tests/tpm_swtpm.rs,
# dps-device-http's tests/tpm.rs) drive swtpm as the device's TPM (swtpm-tools: its setup tools).
command -v swtpm >/dev/null || missing+=(swtpm)
command -v swtpm_setup >/dev/null || missing+=(swtpm-tools)
command -v tpm2_activatecredential >/dev/null || missing+=(tpm2-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

# Python for the SDK tests: a virtualenv under target/ with pinned versions.
venv=target/sdk-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Quick when everything is already installed; brings an older venv up to the pins.
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt

cargo build --workspace --all-targets --locked
# deploy/: promtool checks and alert-rule unit tests, the systemd unit, dashboard and manifests.
scripts/check-deploy.sh
cargo test --workspace --locked
"$venv/bin/pytest" -q tests/sdk
tests/sdk-node/run.sh
# The SDKs' WebSocket transports dial port 443 whatever the host: a dpsd of their own there.
DPS_TEST_API_PORT=443 tests/sdk-node/run.sh websocket-device-client.test.mjs
# Every network-facing parser under libFuzzer for a bounded time (docs/fuzzing.md).
scripts/fuzz.sh

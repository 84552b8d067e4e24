#!/usr/bin/env bash
# The official Azure IoT Node.js SDKs (versions pinned in package.json), unchanged, against the
# real dpsd binary.
#
# Starts `dpsd serve` on free loopback ports with a fresh data directory and a config file that
# links two IoT hubs, waits for its banner, exports what the tests need (DPS_TEST_*), runs
# `node --test` on the *.test.mjs files (or on the files given as arguments), stops dpsd with
# SIGTERM (on every exit path) and exits with node's status.
#
# The service host name is `localhost:<api port>`, so the connection string dpsd writes is used
# as is. The Node SDKs have no API to pass a CA to the device MQTT transport, so dpsd's
# development CA is trusted through NODE_EXTRA_CA_CERTS, set before node starts.
#
# DPSD_BIN overrides the binary (default: target/debug/dpsd under the repository root).
# DPS_TEST_API_PORT=443 runs the service API on 443 with the host name `localhost` (no port),
# where the service SDK needs no help at all (see lib/dpsd.mjs); it needs the right to bind 443.
# The WebSocket transports' tests (websocket-device-client.test.mjs) need it: without it, the
# default file list leaves them out.
# DPS_TEST_KEEP_DATA=1 keeps dpsd's data directory, config and logs (always kept on a failure).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dpsd_bin="${DPSD_BIN:-$root/target/debug/dpsd}"
# How long dpsd may take to print its banner (a first start makes a CA and a server key; a debug
# build on a busy 2-core machine can be slow), and to exit after SIGTERM.
startup_timeout_s=60
stop_timeout_s=10
# The whole node run, a backstop behind the per-await bounds of the tests.
node_timeout_s=300
bind_attempts=3

if [ ! -x "$dpsd_bin" ]; then
  echo "run.sh: dpsd binary not found at $dpsd_bin: build it first (cargo build -p dpsd) or point DPSD_BIN at it" >&2
  exit 2
fi

cd "$here"
# The pinned packages (package-lock.json): installed when missing, reinstalled when the lock file
# changed since (npm records what it installed in node_modules/.package-lock.json). Without
# install scripts: the TPM client's tss.js depends on ffi-napi, whose native build fails on
# Node 20, and which it loads only for a hardware TPM (the tests use its simulator protocol).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --ignore-scripts
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/dpsd-sdk-node.XXXXXX")"
dpsd_pid=""
node_pid=""
keep_tmp="${DPS_TEST_KEEP_DATA:-0}"

stop_dpsd() {
  [ -n "$dpsd_pid" ] || return 0
  local pid="$dpsd_pid" code=0 waited=0
  dpsd_pid=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((stop_timeout_s * 10)) ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: dpsd did not exit within ${stop_timeout_s}s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || code=$?
  if [ "$code" -ne 0 ]; then
    echo "run.sh: dpsd exited with status $code; stderr tail:" >&2
    tail -c 4000 "$tmp/dpsd.stderr" >&2 || true
    keep_tmp=1
  fi
}

cleanup() {
  local status=$?
  if [ -n "$node_pid" ]; then
    kill -TERM "$node_pid" 2>/dev/null || true # timeout(1) passes it on to node
    wait "$node_pid" 2>/dev/null || true
  fi
  stop_dpsd
  if [ "$status" -ne 0 ] || [ "$keep_tmp" -ne 0 ]; then
    echo "run.sh: dpsd's data, config and logs kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

linked_hubs="hub-one.example.net,hub-two.example.net"
cat >"$tmp/dpsd.toml" <<'EOF'
[[linked_hubs]]
host_name = "hub-one.example.net"
allocation_weight = 1

[[linked_hubs]]
host_name = "hub-two.example.net"
allocation_weight = 3
EOF

# dpsd reads DPSD_* variables as settings (and rejects unknown ones): none of the caller's leak in.
dpsd_env=(env)
while IFS= read -r name; do dpsd_env+=(-u "$name"); done < <(compgen -e | grep '^DPSD_' || true)

# Starts dpsd and waits for its banner; returns 1 if dpsd exited first (e.g. a port was taken
# between probe and bind), fails the run if it neither exits nor gets ready in time.
start_dpsd() {
  api_port="${DPS_TEST_API_PORT:-$(free_port)}"
  mqtt_port="$(free_port)"
  amqp_port="$(free_port)"
  if [ "$api_port" = 443 ]; then host_name=localhost; else host_name="localhost:$api_port"; fi
  data_dir="$tmp/data-$1"
  : >"$tmp/dpsd.stdout"
  "${dpsd_env[@]}" "$dpsd_bin" serve \
    --data-dir "$data_dir" \
    --config "$tmp/dpsd.toml" \
    --listen "127.0.0.1:$api_port" \
    --host-name "$host_name" \
    --mqtt-listen "127.0.0.1:$mqtt_port" \
    --amqp-listen "127.0.0.1:$amqp_port" \
    --log warn \
    </dev/null >"$tmp/dpsd.stdout" 2>"$tmp/dpsd.stderr" &
  dpsd_pid=$!

  local deadline=$((SECONDS + startup_timeout_s))
  # The banner prints the service API and device HTTPS lines, then the MQTT, AMQP and ID
  # scope lines.
  until grep -q '^  service API     https://' "$tmp/dpsd.stdout" &&
    grep -q '^  device HTTPS    https://' "$tmp/dpsd.stdout" &&
    grep -q '^  device MQTT     mqtts://' "$tmp/dpsd.stdout" &&
    grep -q '^  device AMQP     amqps://' "$tmp/dpsd.stdout" &&
    grep -q '^  ID scope        ' "$tmp/dpsd.stdout"; do
    if ! kill -0 "$dpsd_pid" 2>/dev/null; then
      local code=0
      wait "$dpsd_pid" || code=$?
      dpsd_pid=""
      echo "run.sh: dpsd exited with status $code before it was ready; stdout:" >&2
      cat "$tmp/dpsd.stdout" >&2
      echo "stderr:" >&2
      tail -c 4000 "$tmp/dpsd.stderr" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "run.sh: dpsd printed no banner within ${startup_timeout_s}s; stdout:" >&2
      cat "$tmp/dpsd.stdout" >&2
      exit 1
    fi
    sleep 0.1
  done
}

started=0
for attempt in $(seq 1 "$bind_attempts"); do
  if start_dpsd "$attempt"; then
    started=1
    break
  fi
  [ -z "${DPS_TEST_API_PORT:-}" ] || break # a fixed port: trying again changes nothing
done
[ "$started" -eq 1 ] || { echo "run.sh: dpsd did not start" >&2; exit 1; }

api_addr="$(sed -n 's/^  service API     https:\/\///p' "$tmp/dpsd.stdout")"
mqtt_addr="$(sed -n 's/^  device MQTT     mqtts:\/\///p' "$tmp/dpsd.stdout")"
amqp_addr="$(sed -n 's/^  device AMQP     amqps:\/\///p' "$tmp/dpsd.stdout")"
banner_scope="$(sed -n 's/^  ID scope        \([^ ]*\).*/\1/p' "$tmp/dpsd.stdout")"
if [ "$api_addr" != "127.0.0.1:$api_port" ] || [ "$mqtt_addr" != "127.0.0.1:$mqtt_port" ] ||
  [ "$amqp_addr" != "127.0.0.1:$amqp_port" ]; then
  echo "run.sh: dpsd serves on $api_addr / $mqtt_addr / $amqp_addr, not on 127.0.0.1:$api_port / 127.0.0.1:$mqtt_port / 127.0.0.1:$amqp_port" >&2
  exit 1
fi
id_scope="$(tr -d '[:space:]' <"$data_dir/id-scope")"
if [ "$id_scope" != "$banner_scope" ]; then
  echo "run.sh: <data>/id-scope holds '$id_scope' but dpsd printed '$banner_scope'" >&2
  exit 1
fi
ca_file="$data_dir/pki/ca.pem"
[ -f "$ca_file" ] || { echo "run.sh: dpsd is ready but $ca_file does not exist" >&2; exit 1; }

export DPS_TEST_CONNECTION_STRING="$(tr -d '\r\n' <"$data_dir/service-connection-string")"
export DPS_TEST_ID_SCOPE="$id_scope"
export DPS_TEST_MQTT_HOST="localhost:$mqtt_port"
export DPS_TEST_AMQP_HOST="localhost:$amqp_port"
export DPS_TEST_HTTPS_HOST="$host_name"
export DPS_TEST_LINKED_HUBS="$linked_hubs"
export DPS_TEST_DATA_DIR="$data_dir"
export NODE_EXTRA_CA_CERTS="$ca_file"

if [ "$#" -gt 0 ]; then
  files=("$@")
elif [ "$api_port" = 443 ]; then
  files=(*.test.mjs)
else
  # The WebSocket transports dial port 443 whatever the host says: their file runs only with
  # the service API there (scripts/test.sh runs it so: DPS_TEST_API_PORT=443 run.sh websocket-device-client.test.mjs).
  files=()
  for f in *.test.mjs; do [ "$f" = websocket-device-client.test.mjs ] || files+=("$f"); done
fi
node_status=0
# In the background and waited for, so that a signal to this script runs its traps at once.
timeout --kill-after=10 "$node_timeout_s" \
  node --test --test-reporter=spec --test-timeout=60000 "${files[@]}" &
node_pid=$!
wait "$node_pid" || node_status=$?
node_pid=""
if [ "$node_status" -eq 124 ]; then
  echo "run.sh: node --test did not finish within ${node_timeout_s}s" >&2
fi
exit "$node_status"

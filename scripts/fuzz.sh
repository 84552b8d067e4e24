#!/usr/bin/env bash
# The fuzz step of the test command: builds every cargo-fuzz target once, then runs each for
# a bounded time from its committed seeds. Fails on the first crash, leak, hang or memory
# blow-up (the reproducer lands in fuzz/artifacts/<target>/). See docs/fuzzing.md.
#
# Bounds (override with the environment):
#   FUZZ_SECONDS  per target, default 10: the build of the targets is most of the step (about
#                 8.5 CPU-minutes from scratch for the first seven, docs/fuzzing.md), so twelve
#                 runs of 10 s (MQTT, SAS, certificates, JSON, portal, five for AMQP) add two
#                 minutes to it on a 2-core CI machine;
#   FUZZ_RSS_MB   per process, default 1024: far above what a target needs (~100 MiB), well
#                 below what would disturb the rest of CI; libFuzzer reports going over as a
#                 crash;
#   FUZZ_TIMEOUT  seconds one input may take, default 10: every parser is bounded, so an
#                 input that takes this long is a hang worth reporting.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-10}"
rss_mb="${FUZZ_RSS_MB:-1024}"
timeout="${FUZZ_TIMEOUT:-10}"

# A fresh machine: the nightly toolchain and cargo-fuzz.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Unoptimised (`--dev`): on a 2-core machine the build is several times shorter, which for
# runs of seconds matters more than inputs per second. No sanitizer: every crate of the
# service forbids unsafe code, so AddressSanitizer would mostly re-check the standard library
# while doubling build and run time. Panics, integer overflow (overflow checks are on), hangs
# and memory growth are what the targets look for.
# The root's `cargo fmt --all` does not reach this separate workspace.
cargo fmt --check
fuzz=(cargo +nightly fuzz)
flags=(--dev --sanitizer none)
start=$(date +%s)
"${fuzz[@]}" build "${flags[@]}"
echo "fuzz: targets built in $(($(date +%s) - start)) s"

for target in $("${fuzz[@]}" list); do
  # New inputs go to a scratch corpus under target/ (ignored by git); the committed seeds
  # in corpus/<target> are only read.
  scratch="target/corpus/$target"
  mkdir -p "$scratch" "corpus/$target"
  "${fuzz[@]}" run "${flags[@]}" "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout" -print_final_stats=1
done
echo "fuzz: every target ran ${seconds} s without a finding; $(($(date +%s) - start)) s in all"

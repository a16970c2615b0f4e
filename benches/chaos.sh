#!/usr/bin/env bash
# The chaos suite (tests/chaos/, docs/chaos.md) with a header saying where, when and against
# which server it ran; everything is also written to target/chaos-<date>.log (or $OUT).
#   benches/chaos.sh                      # both tests
#   benches/chaos.sh partial_partition    # one of them (chaos_suite, partial_partition)
# MSGC_SERVER_BIN, MSGC_CHAOS_SERVER_OPTIONS and MSGC_CHAOS_STRICT pass through to the test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespaces)" >&2; exit 2; }
mkdir -p target
OUT=${OUT:-target/chaos-$(date -u +%Y%m%d-%H%M%S).log}
cargo build --release --quiet --bin msgc-server
BIN=${MSGC_SERVER_BIN:-target/release/msgc-server}
dirty=$(git diff --quiet HEAD -- src 2>/dev/null || echo ", src/ has uncommitted changes")
{
  echo "# chaos run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; kernel $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- server: $BIN; HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
  echo "- options added: ${MSGC_CHAOS_SERVER_OPTIONS:-none}; strict: ${MSGC_CHAOS_STRICT:-0}"
  echo "- command: cargo test --release --test chaos -- --ignored --nocapture ${1:-}"
} | tee "$OUT"
status=0
MSGC_SERVER_BIN=$BIN cargo test --release --test chaos -- --ignored --nocapture ${1:+"$1"} 2>&1 | tee -a "$OUT" || status=$?
echo "chaos.sh: wrote $OUT" >&2
exit "$status"

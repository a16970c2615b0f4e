#!/usr/bin/env bash
# Measures the effect of each relay knob on this machine with msgc-bench fanout
# (1 publisher -> 8 subscribers, max rate) and writes tuning/results/knobs-<date>.md.
# Loopback only; every server is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
OUT=tuning/results/knobs-$(date -u +%Y%m%d-%H%M%S).md
mkdir -p tuning/results
cargo build --release --quiet --bin msgc-server --bin msgc-bench
TMP=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run LABEL SERVER-ARGS BENCH-ARGS CONFIG-BODY
run() {
  local port; port=$(free_port)
  printf 'msgc_server {\n%s\n}\n' "$4" > "$TMP/k.conf"
  target/release/msgc-server --config "$TMP/k.conf" --listen 127.0.0.1:"$port" $2 >/dev/null 2>&1 & PID=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  local j; j=$(target/release/msgc-bench fanout --server 127.0.0.1:"$port" --client raw --server-pid "$PID" -p 1 -s 8 \
    --duration "$DURATION" --warmup "$WARMUP" --json $3)
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  python3 - "$1" "$j" >> "$OUT" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {r['size']} | {r['delivered_msgs_per_s']:,.0f} | {r['delivered_payload_mb_per_s']:,.0f} | {r['latency_us']['p50']} | {r['latency_us']['p99']} | {r['disconnects']} | {r['server_cpu_percent']:.0f} | {r['server_peak_rss_kib']/1024:.0f} |")
PY
}

{
  echo "# Relay knobs on this machine, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; kernel $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- \`tuning/knobs.sh\`: msgc-bench fanout, 1 publisher -> 8 subscribers, max rate, ${DURATION} s after ${WARMUP} s warm-up; server and load generator share the machine"
  echo
  echo "| setting | size | delivered msg/s | MB/s | p50 us | p99 us | disconnects | server CPU % | server RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

run "defaults (threads = cores)" "" "--size 128" ""
run "threads = 1" "--threads 1" "--size 128" ""
run "tcpbuf_size = 32768" "" "--size 128" "tcpbuf_size = 32768"
run "tcpbuf_size = 524288" "" "--size 128" "tcpbuf_size = 524288"
run "messages_per_iter = 1" "" "--size 128" "messages_per_iter = 1"
run "messages_per_iter = 1000" "" "--size 128" "messages_per_iter = 1000"
run "max_backlog = 1000" "" "--size 128" "max_backlog = 1000"
run "max_backlog = 50000" "" "--size 128" "max_backlog = 50000"
run "defaults" "" "--size 16384" ""
run "tcpbuf_size = 524288" "" "--size 16384" "tcpbuf_size = 524288"
run "memory_budget = 4 MiB" "" "--size 16384" "memory_budget = 4194304"
echo "wrote $OUT" >&2

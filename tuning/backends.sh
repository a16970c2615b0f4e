#!/usr/bin/env bash
# Measures the two I/O backends of msgc-server, io_uring and epoll, with msgc-bench fanout
# against an external server (`msgc-server --io uring|epoll`), and writes
# tuning/results/backends-<date>.md. Each row runs RUNS times, alternating the backends, so
# the spread between runs on a shared machine shows. Loopback only; every server is
# stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-2}
OUT=tuning/results/backends-$(date -u +%Y%m%d-%H%M%S).md
mkdir -p tuning/results
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin msgc-server --bin msgc-bench
TMP=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run BACKEND RUN BENCH-ARGS
run() {
  local port; port=$(free_port)
  target/release/msgc-server --io "$1" --listen 127.0.0.1:"$port" > "$TMP/out" 2>&1 & PID=$!
  # Ready once it printed its backend (io_uring or epoll: what it runs on, not only what was
  # asked for), which it does after it listens.
  local got=""
  for _ in $(seq 1 200); do
    got=$(grep -o "io backend [a-z_]*" "$TMP/out" | awk '{print $3}' || true)
    [ -n "$got" ] && break
    sleep 0.05
  done
  local j; j=$(target/release/msgc-bench fanout --server 127.0.0.1:"$port" --server-pid "$PID" \
    --duration "$DURATION" --warmup "$WARMUP" --threads 2 --json $3)
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  python3 - "${got:-unknown}" "$2" "$3" "$j" >> "$OUT" <<'PY'
import json, sys
r = json.loads(sys.argv[4])
print(f"| {sys.argv[1]} | {sys.argv[2]} | {sys.argv[3]} | {r['delivered_msgs_per_s']:,.0f} | {r['delivered_payload_mb_per_s']:,.0f} | {r['latency_us']['p50']} | {r['latency_us']['p99']} | {r['lost']} | {r['disconnects']} | {r['server_cpu_percent']:.0f} | {r['server_peak_rss_kib']/1024:.0f} |")
PY
}

{
  echo "# io_uring and epoll backends on this machine, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; kernel $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- load average before the run (other work on the machine): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- \`tuning/backends.sh\`: \`msgc-server --io BACKEND --listen 127.0.0.1:PORT\` (defaults otherwise) and \`msgc-bench fanout --server 127.0.0.1:PORT --server-pid PID --duration ${DURATION} --warmup ${WARMUP} --threads 2 --json ARGS\`; server and load generator share the machine"
  echo
  echo "| io | run | workload | delivered msg/s | MB/s | p50 us | p99 us | lost | disconnects | server CPU % | server RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

for args in "-p 1 -s 8 --size 128" "-p 1 -s 64 --size 128" "-p 1 -s 8 --size 16384" "-p 1 -s 8 --size 128 --rate 20000"; do
  for i in $(seq 1 "$RUNS"); do
    run uring "$i" "$args"
    run epoll "$i" "$args"
  done
done
echo "wrote $OUT" >&2

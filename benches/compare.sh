#!/usr/bin/env bash
# Runs the fanout matrix against msgc-server, nats-server and redis-server side by side on
# this machine (loopback, free ports), and records JSON, a markdown table and an SVG plot
# under tuning/results/. Needs nats-server and redis-server (Debian: apt-get install -y
# nats-server redis-server). DURATION/WARMUP (seconds) shorten or lengthen each run; the
# whole matrix runs RUNS times (at least 2, so the table shows the spread between runs),
# each row tagged with the machine's 1-minute load average before it (other work running).
# The load generator's threads scale with the machine (msgc-bench defaults); its own CPU
# and a "saturated" flag are recorded per row.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SYSTEMS=${SYSTEMS:-"msgc nats redis"}
RUNS=${RUNS:-2}
# msgc through msgc-bench's raw codec client, like nats and redis through theirs (the
# relay, not a client library, is compared); CLIENT=lib measures the msgc library instead.
CLIENT=${CLIENT:-raw}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=tuning/results/compare-$STAMP
mkdir -p tuning/results

for tool in nats-server redis-server; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is not installed (apt-get install -y nats-server redis-server)" >&2; exit 2; }
done
cargo build --release --quiet --bin msgc-server --bin msgc-bench
BENCH=target/release/msgc-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # system -> sets URL ARGS PID
  local port; port=$(free_port)
  case "$1" in
    msgc)  target/release/msgc-server --listen 127.0.0.1:"$port" >/dev/null 2>&1 & PID=$!; ARGS=(--server 127.0.0.1:"$port" --client "$CLIENT") ;;
    nats)  nats-server -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & PID=$!; ARGS=(--target nats://127.0.0.1:"$port") ;;
    redis) redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no >/dev/null 2>&1 & PID=$!; ARGS=(--target redis://127.0.0.1:"$port") ;;
  esac
  PIDS+=("$PID")
  wait_port "$port"
}

: > "$OUT.json"
row() { # run system subs size rate -> one JSON line in $OUT.json
  local run=$1 sys=$2 subs=$3 size=$4 rate=$5 load j
  start "$sys"
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "== run $run, $sys: 1 -> $subs, $size B, rate $rate (load $load)" >&2
  j=$("$BENCH" fanout "${ARGS[@]}" --server-pid "$PID" -p 1 -s "$subs" --size "$size" --rate "$rate" \
    --duration "$DURATION" --warmup "$WARMUP" --json) ||
    j="{\"target\":\"$sys\",\"subscribers\":$subs,\"size\":$size,\"rate\":$rate,\"failed\":true}"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["run"]=int(sys.argv[2]); r["load1"]=float(sys.argv[3]); print(json.dumps(r))' \
    "$j" "$run" "$load" >> "$OUT.json"
}
for run in $(seq 1 "$RUNS"); do
  for sys in $SYSTEMS; do
    for subs in 1 8 64; do
      for size in 128 1024 16384; do
        row "$run" "$sys" "$subs" "$size" 0
      done
      row "$run" "$sys" "$subs" 128 20000
    done
  done
done

python3 benches/report.py "$OUT.json" "$OUT.md" "$OUT.svg" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" "$(uname -r)" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$DURATION" "$WARMUP"
echo "wrote $OUT.json $OUT.md $OUT.svg" >&2

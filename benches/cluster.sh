#!/usr/bin/env bash
# Three servers on loopback, the publisher on the first, subscribers on the other two:
# msgc's mesh against a 3-server nats-server cluster. Writes tuning/results/cluster-<date>.md
# (one row per run, RUNS runs of each, with the load average before each row) and the raw
# JSON lines beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-2}
CLIENT=${CLIENT:-raw} # msgc-bench's client for msgc (raw codec, or lib)
OUT=tuning/results/cluster-$(date -u +%Y%m%d-%H%M%S).md
: > "${OUT%.md}.json"
mkdir -p tuning/results
command -v nats-server >/dev/null || { echo "cluster.sh: nats-server is not installed" >&2; exit 2; }
cargo build --release --quiet --bin msgc-server --bin msgc-bench
TMP=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

P=($(free_port) $(free_port) $(free_port))
C=($(free_port) $(free_port) $(free_port))
printf 'msgc_server {\n  peers = [\n    n1 = "127.0.0.1:%s"\n    n2 = "127.0.0.1:%s"\n    n3 = "127.0.0.1:%s"\n  ]\n  threads = 1\n}\n' "${P[@]}" > "$TMP/msgc.conf"

row() { # run label subs target-args...
  local run=$1 label=$2 subs=$3 load j
  shift 3
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "== run $run, $label: 1 -> $subs (load $load)" >&2
  j=$(target/release/msgc-bench fanout "$@" -p 1 -s "$subs" --size 128 --duration "$DURATION" --warmup "$WARMUP" --json) ||
    j="{\"target\":\"$label\",\"subscribers\":$subs,\"size\":128,\"failed\":true}"
  echo "$j" >> "${OUT%.md}.json"
  python3 - "$run" "$label" "$load" "$j" >> "$OUT" <<'PY'
import json, sys
run, label, load, r = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
if r.get("failed"):
    print(f"| {run} | {label} | {r['subscribers']} | {r['size']} | failed | | | | | | | | | | {load:.1f} |")
else:
    lg = r["load_generator"]
    print(f"| {run} | {label} | {r['subscribers']} | {r['size']} | {r['delivered_msgs_per_s']:,.0f} | {r['delivered_payload_mb_per_s']:,.0f} | "
          f"{r['latency_us']['p50']} | {r['latency_us']['p99']} | {r['lost']} | {r['missing_at_end']} | {r['disconnects']} | "
          f"{lg['cpu_percent']:.0f} | {'yes' if lg['saturated'] else 'no'} | {lg['machine_busy_percent']} | {load:.1f} |")
PY
}
{
  echo "# 3-server clusters: publisher on server 1, subscribers on servers 2 and 3, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; kernel $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- \`benches/cluster.sh\`: three servers (1 shard each) and the load generator share the machine; ${DURATION} s after ${WARMUP} s warm-up; ${RUNS} runs of each row"
  echo "- \`LG cpu\`: the load generator's own CPU (100 = one core); \`LG sat\`: one of its threads wanted a CPU at least 90 % of the window; \`machine %\`: all CPUs' busy share over the window; \`load\`: 1-minute load average before the row"
  echo
  echo "| run | system | subs | size | delivered msg/s | MB/s | p50 us | p99 us | lost | missing | disconnects | LG cpu % | LG sat | machine % | load |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

for i in 0 1 2; do
  target/release/msgc-server --config "$TMP/msgc.conf" --node "n$((i+1))" --listen 127.0.0.1:"${P[$i]}" >/dev/null 2>&1 & PIDS+=($!)
done
for p in "${P[@]}"; do wait_port "$p"; done
sleep 1 # links form
for run in $(seq 1 "$RUNS"); do
  for subs in 8 64; do
    row "$run" msgc "$subs" --client "$CLIENT" --servers "127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
  done
done
for p in "${PIDS[@]}"; do kill "$p"; done; PIDS=()

routes="nats://127.0.0.1:${C[0]},nats://127.0.0.1:${C[1]},nats://127.0.0.1:${C[2]}"
for i in 0 1 2; do
  nats-server -a 127.0.0.1 -p "${P[$i]}" --cluster nats://127.0.0.1:"${C[$i]}" --routes "$routes" >/dev/null 2>&1 & PIDS+=($!)
done
for p in "${P[@]}"; do wait_port "$p"; done
sleep 2 # routes form
for run in $(seq 1 "$RUNS"); do
  for subs in 8 64; do
    row "$run" nats "$subs" --target "nats://127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
  done
done
echo "wrote $OUT" >&2

#!/usr/bin/env bash
# benches/cluster.sh's msgc rows (3 servers, 1 shard each, publisher on n1, 8 and 64
# subscribers, 128 bytes) for two msgc-server binaries, alternating A, B / B, A per round, with
# one msgc-bench. On a shared machine whose load drifts, runs taken minutes apart (a before file
# and an after file) differ by more than the change being measured; alternating puts both
# servers under the same drift.
#   ROUNDS=4 benches/cluster-ab.sh OLD/msgc-server NEW/msgc-server target/release/msgc-bench OUT.md
set -euo pipefail
A=$1 B=$2 BENCH=$3 OUT=$4
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} WARMUP=${WARMUP:-1}
TMP=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
{
  echo "| round | server | subs | delivered msg/s | p50 us | p99 us | lost | missing | disconnects | LG cpu % | LG sat | machine % | load |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"
one() { # round label bin
  local round=$1 label=$2 bin=$3
  P=($(free_port) $(free_port) $(free_port))
  printf 'msgc_server {\n  peers = [\n    n1 = "127.0.0.1:%s"\n    n2 = "127.0.0.1:%s"\n    n3 = "127.0.0.1:%s"\n  ]\n  threads = 1\n}\n' "${P[@]}" > "$TMP/msgc.conf"
  for i in 0 1 2; do "$bin" --config "$TMP/msgc.conf" --node "n$((i+1))" --listen 127.0.0.1:"${P[$i]}" >/dev/null 2>&1 & PIDS+=($!); done
  for p in "${P[@]}"; do wait_port "$p"; done
  sleep 1
  for subs in 8 64; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "== round $round, $label, $subs subs (load $load)" >&2
    j=$("$BENCH" fanout --client raw --servers "127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}" -p 1 -s "$subs" --size 128 --duration "$DURATION" --warmup "$WARMUP" --json) || j='{"failed":true}'
    python3 - "$round" "$label" "$subs" "$load" "$j" >> "$OUT" <<'PY'
import json, sys
rnd, label, subs, load, r = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5])
if r.get("failed"):
    print(f"| {rnd} | {label} | {subs} | failed | | | | | | | | | {load:.1f} |")
else:
    lg = r["load_generator"]
    print(f"| {rnd} | {label} | {subs} | {r['delivered_msgs_per_s']:,.0f} | {r['latency_us']['p50']} | {r['latency_us']['p99']} | {r['lost']} | {r['missing_at_end']} | {r['disconnects']} | {lg['cpu_percent']:.0f} | {'yes' if lg['saturated'] else 'no'} | {lg['machine_busy_percent']} | {load:.1f} |")
PY
  done
  for p in "${PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; PIDS=()
}
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then one "$round" before "$A"; one "$round" after "$B"
  else one "$round" after "$B"; one "$round" before "$A"; fi
done

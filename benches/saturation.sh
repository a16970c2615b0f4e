#!/usr/bin/env bash
# Saturation is not a fault (issue 9, item 6): SERVERS msgc-server processes meshed on
# loopback, PUBLISHERS publishers at full speed and SUBSCRIBERS subscribers (msgc-bench
# fanout), RUNS runs. Per run it reports what the servers say (stuck kills of peer links and
# of clients, link downs, gap notices sent, publisher pauses: /metrics deltas and the
# servers' log lines) and what the clients saw (loss, gap notices, missing tail,
# disconnects). The target: zero link kills, zero link downs, zero gap notices, zero loss.
#
#   benches/saturation.sh                       # 9 servers, 3 -> 27, 3 runs of 10 s, release
#   RUNS=1 DURATION=5 PROFILE=debug THREADS=0 benches/saturation.sh
#   LOGS=/tmp/satlogs benches/saturation.sh     # keep the servers' logs
#
# Writes tuning/results/saturation-<date>.md and the raw JSON lines beside it; exits 1 when
# the target was missed, 2 when the cluster could not be set up.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-9}
PUBLISHERS=${PUBLISHERS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-27}
NGROUPS=${NGROUPS:-1}
SIZE=${SIZE:-128}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-3}
CLIENT=${CLIENT:-raw}
PROFILE=${PROFILE:-release}
THREADS=${THREADS:-1} # shard threads per server (0 = one per core)
LINK_DEADLINE=${LINK_DEADLINE:-60} # seconds for the full mesh to form (or re-form)

if [ "$PROFILE" = release ]; then BUILD=(--release); else BUILD=(); fi
[ -n "${SKIP_BUILD:-}" ] || cargo build "${BUILD[@]}" --quiet --bin msgc-server --bin msgc-bench
BIN=target/$PROFILE
mkdir -p tuning/results
OUT=tuning/results/saturation-$(date -u +%Y%m%d-%H%M%S).md
JSON=${OUT%.md}.json
: > "$JSON"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$TMP"/n*.log "$LOGS"/ && echo "server logs in $LOGS" >&2; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

P=() M=()
for i in $(seq 1 "$SERVERS"); do P+=("$(free_port)"); M+=("$(free_port)"); done
{
  echo 'msgc_server {'
  echo '  peers = ['
  for i in $(seq 1 "$SERVERS"); do echo "    n$i = \"127.0.0.1:${P[$((i-1))]}\""; done
  echo '  ]'
  echo "  threads = $THREADS"
  echo '  debug_level = INFO'
  echo '}'
} > "$TMP/msgc.conf"
for i in $(seq 1 "$SERVERS"); do
  "$BIN/msgc-server" --config "$TMP/msgc.conf" --node "n$i" --listen "127.0.0.1:${P[$((i-1))]}" \
    --metrics "127.0.0.1:${M[$((i-1))]}" > /dev/null 2> "$TMP/n$i.log" &
  PIDS+=($!)
done
for p in "${P[@]}"; do wait_port "$p" || { echo "saturation.sh: a server did not listen on $p" >&2; exit 2; }; done

# Scrapes every server: one JSON object {server: {counter: value, "links_up": n}} on stdout,
# and the count of the log lines that matter.
scrape() {
  python3 - "$TMP" "${M[@]}" <<'PY'
import json, re, sys, urllib.request
tmp, ports = sys.argv[1], sys.argv[2:]
wanted = ["msgc_stuck_kills_total", "msgc_link_downs_total", "msgc_link_ups_total",
          "msgc_gaps_sent_total", "msgc_publisher_pauses_total"]
out = {}
for i, port in enumerate(ports, 1):
    s = {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception as e:  # a dead server is reported, not hidden
        out[f"n{i}"] = {"error": str(e)}
        continue
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in wanted:
            s[name] = s.get(name, 0) + float(line.rsplit(" ", 1)[1])
        elif name == "msgc_link_up":
            s["links_up"] = s.get("links_up", 0) + float(line.rsplit(" ", 1)[1])
    log = open(f"{tmp}/n{i}.log", errors="replace").read()
    # A server closing a link to a live peer: as stuck, or (newer cores) as silent for
    # link_timeout.
    s["log_link_kills"] = log.count("killing stuck peer link") + log.count("nothing received on the peer link")
    s["log_client_kills"] = log.count("killing stuck connection")
    s["log_link_downs"] = len(re.findall(r"\blink down\b", log))
    out[f"n{i}"] = s
print(json.dumps(out))
PY
}

# Waits until every server has a link up to every other one.
wait_mesh() {
  local end=$((SECONDS + LINK_DEADLINE)) up
  while :; do
    up=$(scrape | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(int(v.get("links_up",0)) for v in d.values()))')
    [ "$up" -eq $((SERVERS * (SERVERS - 1))) ] && return 0
    [ $SECONDS -ge $end ] && { echo "saturation.sh: only $up of $((SERVERS * (SERVERS - 1))) link ends up after ${LINK_DEADLINE}s" >&2; return 1; }
    sleep 0.2
  done
}
wait_mesh || exit 2

ADDRS=$(printf '127.0.0.1:%s,' "${P[@]}"); ADDRS=${ADDRS%,}
CMD="msgc-bench fanout --client $CLIENT --servers <n1..n$SERVERS> -p $PUBLISHERS -s $SUBSCRIBERS -g $NGROUPS --size $SIZE --duration $DURATION --warmup $WARMUP --json"
{
  echo "# Saturation: $SERVERS servers on loopback, $PUBLISHERS publishers at full speed, $SUBSCRIBERS subscribers, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; kernel $(uname -r); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $PROFILE build"
  echo "- \`benches/saturation.sh\` (SERVERS=$SERVERS PUBLISHERS=$PUBLISHERS SUBSCRIBERS=$SUBSCRIBERS NGROUPS=$NGROUPS THREADS=$THREADS RUNS=$RUNS): $SERVERS \`msgc-server\` processes (\`threads = $THREADS\`, default limits) and the load generator on one machine; each run is \`$CMD\` once the full mesh is up"
  echo "- publishers connect to n1..n$PUBLISHERS (round-robin), subscribers to n2..n$SERVERS; the run starts once every publisher's probe reached every subscriber"
  echo "- server columns are /metrics deltas over the run, summed over servers: \`link kills\` / \`client kills\` count the log lines \"killing stuck peer link\" or \"nothing received on the peer link\" / \"killing stuck connection\" (\`stuck kills\` is msgc_stuck_kills_total, both kinds), \`link downs\` msgc_link_downs_total, \`gaps sent\` msgc_gaps_sent_total, \`pauses\` msgc_publisher_pauses_total; client columns are msgc-bench's: \`lost\` sequence holes, \`gaps\` gap notices received, \`missing\` tail never received, \`disc.\` subscribers or publishers cut"
  echo "- \`read gap ms\`: the longest time one of msgc-bench's subscribers went between two reads (if it is under the servers' \`stall_timeout\`, 1 s, a client kill was not the load generator stopping to read); \`LG sat\`: msgc-bench says one of its own threads was the limit; \`machine %\`: all CPUs' busy share over the window; \`load\`: 1-minute load average before the run"
  echo "- target (issue 9 item 6): zero link kills, link downs, gap notices and loss; client kills (a subscriber that made no read progress for \`stall_timeout\`) are shown but are the slow-consumer rule, not a link fault"
  echo
  echo "| run | delivered msg/s | published msg/s | lost | gaps | missing | disc. | link kills | client kills | stuck kills | link downs | gaps sent | pauses | read gap ms | LG sat | machine % | load |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

MISSED=0
for run in $(seq 1 "$RUNS"); do
  wait_mesh || { echo "| $run | the mesh did not re-form within ${LINK_DEADLINE}s | | | | | | | | | | | | | | | |" >> "$OUT"; MISSED=1; break; }
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "== run $run (load $load)" >&2
  before=$(scrape)
  j=$("$BIN/msgc-bench" fanout --client "$CLIENT" --servers "$ADDRS" -p "$PUBLISHERS" -s "$SUBSCRIBERS" -g "$NGROUPS" \
        --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --json 2> "$TMP/bench.err") ||
    j="{\"failed\":$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' < "$TMP/bench.err")}"
  # Let the servers' counters settle (they refresh at every shard tick).
  sleep 1
  after=$(scrape)
  verdict=$(python3 - "$run" "$load" "$j" "$before" "$after" "$JSON" <<'PY'
import json, sys
run, load, r, before, after, path = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6]
keys = {"link kills": "log_link_kills", "client kills": "log_client_kills", "stuck kills": "msgc_stuck_kills_total",
        "link downs": "msgc_link_downs_total", "gaps sent": "msgc_gaps_sent_total", "pauses": "msgc_publisher_pauses_total"}
per_server = {n: {k: after[n].get(v, 0) - before.get(n, {}).get(v, 0) for k, v in keys.items()}
              for n in after if "error" not in after[n]}
dead = [n for n in after if "error" in after[n]]
tot = {k: int(sum(s[k] for s in per_server.values())) for k in keys}
with open(path, "a") as f:
    f.write(json.dumps({"run": run, "load": load, "bench": r, "servers": per_server, "dead_servers": dead}) + "\n")
if "failed" in r:
    print(f"| {run} | failed: {r['failed'][:200]} | | | | | | {tot['link kills']} | {tot['client kills']} | {tot['stuck kills']} | {tot['link downs']} | {tot['gaps sent']} | {tot['pauses']} | | | | {load:.1f} |")
    print("MISSED", file=sys.stderr)
    sys.exit(0)
lg = r.get("load_generator", {})
print(f"| {run} | {r['delivered_msgs_per_s']:,.0f} | {r['published_msgs_per_s']:,.0f} | {r['lost']} | {r['gaps_reported']} | "
      f"{r['missing_at_end']} | {r['disconnects']} | {tot['link kills']} | {tot['client kills']} | {tot['stuck kills']} | "
      f"{tot['link downs']} | {tot['gaps sent']} | {tot['pauses']} | {r.get('max_read_gap_ms', 0):.0f} | {'yes' if lg.get('saturated') else 'no'} | {lg.get('machine_busy_percent')} | {load:.1f} |")
bad = tot["link kills"] + tot["link downs"] + tot["gaps sent"] + r["lost"] + r["gaps_reported"] + r["missing_at_end"] + len(dead)
if bad:
    print("MISSED", file=sys.stderr)
PY
  ) 2> "$TMP/verdict"
  echo "$verdict" >> "$OUT"
  echo "$verdict" >&2
  grep -q MISSED "$TMP/verdict" && MISSED=1
done

{
  echo
  echo "Server log lines about kills and link losses (first 20 of each server):"
  echo
  echo '```'
  for i in $(seq 1 "$SERVERS"); do
    grep -E "killing stuck|nothing received on the peer link|link down|gap" "$TMP/n$i.log" | head -20 | sed "s/^/n$i: /" || true
  done
  echo '```'
  echo
  if [ "$MISSED" = 0 ]; then echo "Verdict: target met in every run."; else echo "Verdict: target MISSED (see the rows above)."; fi
} >> "$OUT"
echo "wrote $OUT" >&2
exit "$MISSED"

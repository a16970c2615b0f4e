#!/usr/bin/env bash
# Checks msgc-bench's NATS and Redis drivers (and its msgc driver) against independent clients on the same
# workload (1 publisher -> SUBS subscribers, SIZE-byte messages, loopback):
#   NATS:  benches/fanoutcheck (Go, publisher and subscribers on the Go NATS client from
#          Debian's golang-github-nats-io-go-nats-dev), against the same nats-server build,
#          at max rate and at a fixed RATE (msg/s published).
#   Redis: redis-benchmark publishes (PUBLISH, pipelined, one connection) while fanoutcheck's
#          minimal RESP subscribers count the pushes; max rate only (redis-benchmark has no
#          pacing).
#   msgc:  fanoutcheck speaks the wire protocol from docs/protocol.md (its own code), against
#          target/release/msgc-server; max rate.
# Both count deliveries by receive time over DURATION seconds after WARMUP seconds. Each
# case gets RUNS alternating pairs (a fresh server per run); the script prints both
# figures, their ratio, each client's own CPU, and fails when msgc-bench's mean is more than
# TOLERANCE percent below the independent one's, or more than TOLERANCE percent above it
# unless the independent client (a) spent more than twice msgc-bench's CPU per delivered
# message: server and clients share the machine's cores, so at max rate a client that costs
# more CPU per message leaves less to the server; or (b) lost more subscribers to
# disconnects (the server cut them as too slow), so it counted fewer receivers. Either way
# the difference is the independent client's, not a defect of the driver (msgc-bench
# verifies every message it counts by sequence number). Raw JSON lines go beside the table.
# Writes tuning/results/check-drivers-<date>.md. Needs: apt-get install -y golang-go
# golang-github-nats-io-go-nats-dev nats-server redis-server (redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SUBS=${SUBS:-8}
SIZE=${SIZE:-128}
RUNS=${RUNS:-2}
TOLERANCE=${TOLERANCE:-20}
PIPELINE=${PIPELINE:-256}
CASES=${CASES:-"nats:0 nats:20000 nats:60000 redis:0 msgc:0"}
OUT=tuning/results/check-drivers-$(date -u +%Y%m%d-%H%M%S).md

for tool in go nats-server redis-server redis-benchmark python3; do
  command -v "$tool" >/dev/null || {
    echo "check-drivers.sh: $tool is not installed (apt-get install -y golang-go golang-github-nats-io-go-nats-dev nats-server redis-server redis-tools)" >&2
    exit 2
  }
done
[ -d /usr/share/gocode/src/github.com/nats-io/nats.go ] || {
  echo "check-drivers.sh: the Go NATS client is not installed (apt-get install -y golang-github-nats-io-go-nats-dev)" >&2
  exit 2
}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
# Debian's packaged Go sources, offline (GOPATH mode: no module download).
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$TMP/gocache" GOFLAGS= \
  go build -o "$TMP/fanoutcheck" benches/fanoutcheck/main.go
cargo build --release --quiet --bin msgc-bench --bin msgc-server
BENCH=target/release/msgc-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
start_server() { # system -> PORT SERVER_PID
  PORT=$(free_port)
  case "$1" in
    nats) nats-server -a 127.0.0.1 -p "$PORT" >"$TMP/server.log" 2>&1 & SERVER_PID=$! ;;
    redis) redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no >"$TMP/server.log" 2>&1 & SERVER_PID=$! ;;
    msgc) target/release/msgc-server --listen 127.0.0.1:"$PORT" >"$TMP/server.log" 2>&1 & SERVER_PID=$! ;;
  esac
  PIDS+=("$SERVER_PID")
  wait_port "$PORT"
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
load() { cut -d' ' -f1 /proc/loadavg; }

bench_run() { # system rate -> JSON line
  start_server "$1"
  # The raw drivers are what is checked (--client lib is the msgc library, not a driver).
  "$BENCH" fanout --target "$1://127.0.0.1:$PORT" --client raw --server-pid "$SERVER_PID" -p 1 -s "$SUBS" --size "$SIZE" --rate "$2" \
    --duration "$DURATION" --warmup "$WARMUP" --json
  stop_server
}

independent_run() { # system rate -> JSON line
  start_server "$1"
  case "$1" in
    msgc)
      "$TMP/fanoutcheck" -system msgc -addr 127.0.0.1:"$PORT" -subs "$SUBS" -size "$SIZE" \
        -duration "$DURATION" -warmup "$WARMUP"
      ;;
    nats)
      "$TMP/fanoutcheck" -system nats -addr 127.0.0.1:"$PORT" -subs "$SUBS" -size "$SIZE" -rate "$2" \
        -duration "$DURATION" -warmup "$WARMUP"
      ;;
    redis)
      "$TMP/fanoutcheck" -system redis -addr 127.0.0.1:"$PORT" -subs "$SUBS" -size "$SIZE" \
        -duration "$DURATION" -warmup "$WARMUP" >"$TMP/sub.json" 2>"$TMP/sub.err" & local sub=$!
      PIDS+=("$sub")
      for _ in $(seq 1 600); do grep -q ready "$TMP/sub.err" 2>/dev/null && break; kill -0 "$sub" 2>/dev/null || break; sleep 0.05; done
      local payload; payload=$(head -c "$SIZE" /dev/zero | tr '\0' x)
      redis-benchmark -h 127.0.0.1 -p "$PORT" -c 1 -P "$PIPELINE" -n 2000000000 -q \
        PUBLISH bench.g0 "$payload" >/dev/null 2>&1 & local pub=$!
      PIDS+=("$pub")
      wait "$sub" || { cat "$TMP/sub.err" >&2; kill "$pub" 2>/dev/null; return 1; }
      kill "$pub" 2>/dev/null || true; wait "$pub" 2>/dev/null || true
      cat "$TMP/sub.json"
      ;;
  esac
  stop_server
}

RESULTS="${OUT%.md}.json"
: >"$RESULTS"
for case in $CASES; do
  sys=${case%%:*} rate=${case#*:}
  for run in $(seq 1 "$RUNS"); do
    # Alternate which client goes first, so a trend in the machine's load hits both.
    order="bench independent"
    [ $((run % 2)) -eq 0 ] && order="independent bench"
    for who in $order; do
      l=$(load)
      echo "== $sys rate $rate, run $run: $who (load $l)" >&2
      if [ "$who" = bench ]; then j=$(bench_run "$sys" "$rate"); else j=$(independent_run "$sys" "$rate"); fi
      python3 -c 'import json,sys; r=json.loads(sys.argv[5]); print(json.dumps({"system":sys.argv[1],"rate":int(sys.argv[2]),"client":sys.argv[3],"load":float(sys.argv[4]),"result":r}))' \
        "$sys" "$rate" "$who" "$l" "$j" >>"$RESULTS"
    done
  done
done

status=0
set +e
python3 - "$RESULTS" "$OUT" "$TOLERANCE" "$SUBS" "$SIZE" "$DURATION" "$WARMUP" "$PIPELINE" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" "$(nproc)" "$(uname -r)" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys
src, out, tol, subs, size, dur, warm, pipe, cpu, cores, kernel, commit = sys.argv[1:13]
rows = [json.loads(l) for l in open(src) if l.strip()]
lines = [
    f"# msgc-bench drivers against independent clients, 1 -> {subs}, {size} B",
    "",
    f"- CPU: {cpu}, {cores} cores; kernel {kernel}; commit {commit}; {dur} s measured after {warm} s warm-up",
    "- independent: NATS `benches/fanoutcheck` (Go NATS client, publisher and subscribers); Redis "
    f"`redis-benchmark -c 1 -P {pipe} PUBLISH` with `benches/fanoutcheck -system redis` subscribers; msgc "
    "`benches/fanoutcheck -system msgc` (raw protocol, its own code)",
    "- `load`: 1-minute load average before the run (other work on the machine); `client cpu`: the client "
    "process's own CPU over the window (100 = one core; for Redis, the independent side counts only its "
    "subscribers)",
    "",
    "| system | rate | client | load | delivered msg/s | published msg/s | disconnects | client cpu % | client CPU us per delivery |",
    "|---|---|---|---|---|---|---|---|---|",
]
means, costs, cuts, failed = {}, {}, {}, False
for r in rows:
    res = r["result"]
    d = res["delivered_msgs_per_s"]
    case = (r["system"], r["rate"])
    means.setdefault(case, {}).setdefault(r["client"], []).append(d)
    cuts.setdefault(case, {}).setdefault(r["client"], []).append(res.get("disconnects", 0))
    cpu_pct = res.get("client_cpu_percent", res.get("load_generator", {}).get("cpu_percent"))
    cost = cpu_pct / 100 / d * 1e6 if cpu_pct is not None and d else None
    if cost is not None:
        costs.setdefault(case, {}).setdefault(r["client"], []).append(cost)
    name = "msgc-bench" if r["client"] == "bench" else "independent"
    lines.append(f"| {r['system']} | {r['rate'] or 'max'} | {name} | {r['load']:.1f} | {d:,.0f} | "
                 f"{res.get('published_msgs_per_s', 0):,.0f} | {res.get('disconnects', 0)} | "
                 f"{'-' if cpu_pct is None else f'{cpu_pct:.0f}'} | {'-' if cost is None else f'{cost:.2f}'} |")
lines += ["", "| system | rate | msgc-bench mean | independent mean | ratio | verdict |", "|---|---|---|---|---|---|"]
avg = lambda v: sum(v) / len(v) if v else None
for (sysname, rate), m in means.items():
    b, i = avg(m["bench"]), avg(m["independent"])
    ratio = b / i if i else float("inf")
    within = abs(ratio - 1) * 100 <= float(tol)
    cb, ci = avg(costs.get((sysname, rate), {}).get("bench", [])), avg(costs.get((sysname, rate), {}).get("independent", []))
    client_bound = ratio > 1 and cb and ci and ci > 2 * cb
    kb, ki = sum(cuts[(sysname, rate)]["bench"]), sum(cuts[(sysname, rate)]["independent"])
    cut_more = ratio > 1 and ki > kb
    if within:
        verdict = "ok"
    elif client_bound:
        verdict = (f"msgc-bench higher: the independent client spent {ci / cb:.1f}x its CPU per delivery "
                   "on the shared cores (not a driver defect)")
    elif cut_more:
        verdict = (f"msgc-bench higher: the server disconnected {ki} of the independent client's subscribers "
                   f"against {kb} of msgc-bench's over the runs (not a driver defect)")
    else:
        verdict = f"OFF by more than {tol} %"
        failed = True
    lines.append(f"| {sysname} | {rate or 'max'} | {b:,.0f} | {i:,.0f} | {ratio:.2f} | {verdict} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
sys.exit(1 if failed else 0)
PY
[ $? -eq 0 ] || status=1
echo "wrote $OUT" >&2
exit $status

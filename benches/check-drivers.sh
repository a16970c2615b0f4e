#!/usr/bin/env bash
# Checks msgc-bench's NATS and Redis drivers against independent clients on the same
# workload (1 publisher -> SUBS subscribers, SIZE-byte messages, max rate, loopback):
#   NATS:  benches/fanoutcheck (Go, publisher and subscribers on the Go NATS client from
#          Debian's golang-github-nats-io-go-nats-dev), against the same nats-server build.
#   Redis: redis-benchmark publishes (PUBLISH, pipelined, one connection) while fanoutcheck's
#          minimal RESP subscribers count the pushes.
# Both count deliveries by receive time over DURATION seconds after WARMUP seconds. Each
# system gets RUNS alternating pairs (a fresh server per run); the script prints both
# figures, their ratio, and fails when the means differ by more than TOLERANCE percent.
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
SYSTEMS=${SYSTEMS:-"nats redis"}
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
cargo build --release --quiet --bin msgc-bench
BENCH=target/release/msgc-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
start_server() { # system -> PORT SERVER_PID
  PORT=$(free_port)
  case "$1" in
    nats) nats-server -a 127.0.0.1 -p "$PORT" >"$TMP/server.log" 2>&1 & SERVER_PID=$! ;;
    redis) redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no >"$TMP/server.log" 2>&1 & SERVER_PID=$! ;;
  esac
  PIDS+=("$SERVER_PID")
  wait_port "$PORT"
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
load() { cut -d' ' -f1 /proc/loadavg; }

bench_run() { # system -> JSON line
  start_server "$1"
  "$BENCH" fanout --target "$1://127.0.0.1:$PORT" -p 1 -s "$SUBS" --size "$SIZE" \
    --duration "$DURATION" --warmup "$WARMUP" --json
  stop_server
}

independent_run() { # system -> JSON line
  start_server "$1"
  case "$1" in
    nats)
      "$TMP/fanoutcheck" -system nats -addr 127.0.0.1:"$PORT" -subs "$SUBS" -size "$SIZE" \
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

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
for sys in $SYSTEMS; do
  for run in $(seq 1 "$RUNS"); do
    # Alternate which client goes first, so a trend in the machine's load hits both.
    order="bench independent"
    [ $((run % 2)) -eq 0 ] && order="independent bench"
    for who in $order; do
      l=$(load)
      echo "== $sys run $run: $who (load $l)" >&2
      if [ "$who" = bench ]; then j=$(bench_run "$sys"); else j=$(independent_run "$sys"); fi
      python3 -c 'import json,sys; r=json.loads(sys.argv[4]); print(json.dumps({"system":sys.argv[1],"client":sys.argv[2],"load":float(sys.argv[3]),"result":r}))' \
        "$sys" "$who" "$l" "$j" >>"$RESULTS"
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
    f"# msgc-bench drivers against independent clients, 1 -> {subs}, {size} B, max rate",
    "",
    f"- CPU: {cpu}, {cores} cores; kernel {kernel}; commit {commit}; {dur} s measured after {warm} s warm-up",
    "- independent: NATS `benches/fanoutcheck` (Go NATS client); Redis `redis-benchmark -c 1 -P "
    f"{pipe} PUBLISH` with `benches/fanoutcheck -system redis` subscribers",
    "- `load` is the 1-minute load average before the run (other work on the machine)",
    "",
    "| system | client | run load | delivered msg/s | published msg/s | disconnects | load generator saturated |",
    "|---|---|---|---|---|---|---|",
]
means, failed = {}, False
for r in rows:
    res = r["result"]
    d = res["delivered_msgs_per_s"]
    means.setdefault(r["system"], {}).setdefault(r["client"], []).append(d)
    sat = res.get("load_generator", {}).get("saturated")
    lines.append(f"| {r['system']} | {'msgc-bench' if r['client']=='bench' else 'independent'} | {r['load']:.1f} | {d:,.0f} | "
                 f"{res.get('published_msgs_per_s', 0):,.0f} | {res.get('disconnects', 0)} | {'-' if sat is None else sat} |")
lines += ["", "| system | msgc-bench mean | independent mean | ratio | verdict |", "|---|---|---|---|---|"]
for sysname, m in means.items():
    b = sum(m["bench"]) / len(m["bench"])
    i = sum(m["independent"]) / len(m["independent"])
    ratio = b / i if i else float("inf")
    ok = abs(ratio - 1) * 100 <= float(tol)
    failed |= not ok
    lines.append(f"| {sysname} | {b:,.0f} | {i:,.0f} | {ratio:.2f} | {'ok' if ok else 'OFF by more than ' + tol + ' %'} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
sys.exit(1 if failed else 0)
PY
[ $? -eq 0 ] || status=1
echo "wrote $OUT" >&2
exit $status

#!/usr/bin/env bash
# Client libraries compared on this machine, in one run: msgc::client (examples/client_bench.rs)
# against msgc-server, and nats.go (benches/nats_client) against nats-server, with the same
# loads: one client publishing 128 B messages as fast as its library takes them, alone
# ("pub") and to 8 subscriber clients ("fanout"). Each case runs ROUNDS times, alternating
# the two, so that load from elsewhere on the machine hits both alike.
#
#   benches/client.sh                  # prints one JSON line per run, then a summary
#   DURATION=10 ROUNDS=3 benches/client.sh
#
# Needs: cargo, go, nats.go and nats-server (Debian: golang-go golang-github-nats-io-go-nats-dev
# nats-server). Servers listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
SUBS=${SUBS:-8}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

cargo build --release --quiet --bin msgc-server --example client_bench
(cd benches/nats_client && GOPATH=/usr/share/gocode GO111MODULE=off GOCACHE="$work/gocache" go build -o "$work/nats_client" .)

msgc_port=$(free_port)
nats_port=$(free_port)
target/release/msgc-server --listen "127.0.0.1:$msgc_port" >"$work/msgc.log" 2>&1 &
pids+=($!)
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$msgc_port"
wait_port "$nats_port"

echo "# $(nproc) cores, $(uname -r), load before: $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
results="$work/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for mode in pub fanout; do
        target/release/examples/client_bench "$mode" --api multicast --server "127.0.0.1:$msgc_port" \
            --subs "$SUBS" --duration "$DURATION" | tee -a "$results"
        target/release/examples/client_bench "$mode" --api send_many --server "127.0.0.1:$msgc_port" \
            --subs "$SUBS" --duration "$DURATION" | tee -a "$results"
        "$work/nats_client" -mode "$mode" -url "nats://127.0.0.1:$nats_port" -subs "$SUBS" \
            -duration "$DURATION" | tee -a "$results"
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" <<'PY'
import json, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["mode"], r["client"] + " " + r["api"])
    runs[key].append(r["delivered_msgs_per_s"] if r["mode"] == "fanout" else r["published_msgs_per_s"])
print("| case | client | M msg/s (each run) |")
print("|---|---|---|")
for (mode, client), v in sorted(runs.items()):
    what = "published" if mode == "pub" else "deliveries"
    print(f"| {mode} ({what}) | {client} | {' / '.join(f'{x/1e6:.2f}' for x in v)} |")
PY

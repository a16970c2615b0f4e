#!/usr/bin/env bash
# benches/scrape_overhead.sh: does scraping /metrics and the control socket cost the data path anything?
# Alternates runs without and with a 10 Hz /metrics scraper plus `msgc-ctl sessions` at 1 Hz.
set -u
# Build first: cargo build --release --bin msgc-server --bin msgc-bench --bin msgc-ctl
B="$(cd "$(dirname "$0")/.." && pwd)/target/release"
D=$(mktemp -d)
$B/msgc-server --listen 127.0.0.1:0 --threads 1 --metrics 127.0.0.1:0 --control $D/c.sock > $D/out 2>$D/err &
SPID=$!
sleep 1
ADDR=$(head -1 $D/out | awk '{print $NF}')
M=$(grep 'metrics on' $D/out | sed 's#.*http://##; s#/metrics##')
scrape() {
  local i=0
  while [ -f $D/scraping ] && [ $i -lt 2000 ]; do
    curl -s -o /dev/null http://$M/metrics
    if [ $((i % 10)) -eq 0 ]; then $B/msgc-ctl --control $D/c.sock sessions > /dev/null; fi
    i=$((i+1)); sleep 0.1
  done
}
for round in 1 2 3; do
  for mode in quiet scraped; do
    if [ $mode = scraped ]; then touch $D/scraping; scrape & SC=$!; fi
    R=$($B/msgc-bench fanout --server $ADDR -p 1 -s 8 --size 128 --duration 5 --warmup 1 --server-pid $SPID --json)
    if [ $mode = scraped ]; then rm -f $D/scraping; wait $SC; fi
    echo "$round $mode $R" | python3 -c 'import sys,json; l=sys.stdin.read().split(" ",2); r=json.loads(l[2]); print(l[0], l[1], {k:v for k,v in r.items() if k in ("delivered_msgs_per_s","published_msgs_per_s","lost","disconnects","server_cpu_s")} or list(r.keys()))'
  done
done
# Scrape latency under load.
touch $D/scraping
$B/msgc-bench fanout --server $ADDR -p 1 -s 8 --size 128 --duration 6 --warmup 1 --json > /dev/null &
BP=$!
sleep 2
for i in 1 2 3 4 5; do curl -s -o /dev/null -w "metrics %{time_total}s %{size_download}B\n" http://$M/metrics; done
for i in 1 2 3; do /usr/bin/time -f "ctl sessions %es" $B/msgc-ctl --control $D/c.sock sessions > /dev/null; done
wait $BP
kill $SPID; wait $SPID 2>/dev/null
rm -rf $D

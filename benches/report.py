#!/usr/bin/env python3
"""Turns compare.sh's JSON lines (one per run of each row) into a markdown table showing
every row's spread between runs, the ratios between systems run by run, and a small SVG
plot of the means."""
import json
import sys

src, md_path, svg_path, cpu, kernel, commit, date, duration, warmup = sys.argv[1:10]
rows = [json.loads(l) for l in open(src) if l.strip()]
ok = [r for r in rows if not r.get("failed")]


def key(r):
    return (r.get("target"), r.get("subscribers"), r.get("size"), r.get("rate") or 0)


def get(r, path):
    v = r
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return v


groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)


def spread(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def millions(v):
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.0f} k"


runs = sorted({r.get("run", 1) for r in rows})
loads = [r["load1"] for r in rows if "load1" in r]
lines = [
    f"# msgc vs NATS vs Redis: fanout, {date}",
    "",
    f"- CPU: {cpu}; kernel {kernel}; commit {commit}",
    f"- server and load generator share the machine; {duration} s measured after {warmup} s warm-up per row; "
    f"{len(runs)} runs of the whole matrix; each cell gives the range over the runs (one value when they agree)",
    "- command: `benches/compare.sh` (msgc-bench fanout, 1 publisher, load-generator threads = cores)",
    "- msgc driven by msgc-bench's " + (", ".join(sorted({r.get("client", "raw") for r in rows if r.get("target") == "msgc"})) or "raw")
    + " client (`--client`; nats and redis always by its raw drivers)",
    f"- 1-minute load average before the rows: {min(loads):.1f} to {max(loads):.1f} (other engineers' builds share the machine)"
    if loads else "- load average not recorded",
    "- `LG cpu` is the load generator's own CPU (100 = one core); `LG sat` counts the runs where one of its threads "
    "wanted a CPU at least 90 % of the window (busy, or waiting for a core the server also needs), so that row "
    "measured the machine rather than the server alone",
    "- `machine %`: all CPUs' busy share over the window (100 = server, load generator and other work left nothing idle)",
    "",
    "| system | subs | size | rate | delivered msg/s | payload MB/s | p50 us | p99 us | lost | missing | dups | disc | server CPU % | server RSS MiB | LG cpu % | LG sat | machine % | load |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for k, rs in groups.items():
    good = [r for r in rs if not r.get("failed")]
    failed = len(rs) - len(good)
    col = lambda path: [get(r, path) for r in good]
    total = lambda path: sum(v or 0 for v in col(path))
    sat = sum(1 for r in good if get(r, "load_generator.saturated"))
    delivered = spread(col("delivered_msgs_per_s"), millions)
    if failed:
        delivered += f" ({failed} failed)"
    lines.append("| " + " | ".join(str(x) for x in [
        k[0], k[1], k[2], k[3] or "max", delivered,
        spread(col("delivered_payload_mb_per_s"), lambda v: f"{v:,.0f}"),
        spread(col("latency_us.p50"), str), spread(col("latency_us.p99"), str),
        total("lost"), total("missing_at_end"), total("duplicates"), total("disconnects"),
        spread(col("server_cpu_percent"), lambda v: f"{v:.0f}"),
        spread([v / 1024 if v else None for v in col("server_peak_rss_kib")], lambda v: f"{v:.0f}"),
        spread(col("load_generator.cpu_percent"), lambda v: f"{v:.0f}"),
        f"{sat}/{len(good)}",
        spread(col("load_generator.machine_busy_percent"), lambda v: f"{v:.0f}"),
        spread([r.get("load1") for r in rs], lambda v: f"{v:.1f}"),
    ]) + " |")

# Ratios msgc / other, run by run (same run index), for the rows every system ran.
lines += ["", "## Ratios, run by run", "",
          "msgc's delivered msg/s (or p99 for the paced rows) divided by the other system's, computed "
          "within each run of the matrix; the range is over the runs.", "",
          "| subs | size | rate | msgc / nats | msgc / redis |", "|---|---|---|---|---|"]
by_run = {(key(r), r.get("run", 1)): r for r in ok}
for k in groups:
    if k[0] != "msgc":
        continue
    cells = []
    for other in ("nats", "redis"):
        ratios = []
        for run in runs:
            a, b = by_run.get((k, run)), by_run.get(((other,) + k[1:], run))
            if not a or not b:
                continue
            metric = "latency_us.p99" if k[3] else "delivered_msgs_per_s"
            x, y = get(a, metric), get(b, metric)
            if x and y:
                ratios.append(x / y)
        cells.append(spread(ratios, lambda v: f"{v:.2f}") + (" (p99)" if k[3] and ratios else ""))
    lines.append(f"| {k[1]} | {k[2]} | {k[3] or 'max'} | {cells[0]} | {cells[1]} |")
open(md_path, "w").write("\n".join(lines) + "\n")

# Plot: deliveries/s (128 B, max rate) and p99 (128 B, 20000 msg/s) against subscribers,
# means over the runs.
colors = {"msgc": "#1f77b4", "nats": "#2ca02c", "redis": "#d62728"}
W, H, PAD = 420, 260, 50


def mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def panel(x0, title, rate, path, unit):
    series = {}
    for k, rs in groups.items():
        if k[2] != 128 or k[3] != rate:
            continue
        v = mean([get(r, path) for r in rs if not r.get("failed")])
        if v is not None:
            series.setdefault(k[0], []).append((k[1], v))
    top = max([v for s in series.values() for _, v in s] + [1])
    xs = [1, 8, 64]
    out = [f'<g transform="translate({x0},0)"><text x="{W/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-10}" y2="{H-PAD}" stroke="black"/><line x1="{PAD}" y1="30" x2="{PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<text x="{PAD-5}" y="35" text-anchor="end" font-size="10">{top:,.0f}</text><text x="{PAD-5}" y="{H-PAD}" text-anchor="end" font-size="10">0</text>',
           f'<text x="{W/2}" y="{H-15}" text-anchor="middle" font-size="11">subscribers ({unit})</text>']
    for i, x in enumerate(xs):
        px = PAD + 20 + i * (W - PAD - 50) / 2
        out.append(f'<text x="{px}" y="{H-PAD+15}" text-anchor="middle" font-size="10">{x}</text>')
    for n, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        coords = [(PAD + 20 + xs.index(x) * (W - PAD - 50) / 2, H - PAD - (v / top) * (H - PAD - 35)) for x, v in pts if x in xs]
        c = colors.get(name, "black")
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(c, " ".join(f"{x:.0f},{y:.0f}" for x, y in coords)))
        out.append(f'<text x="{W-60}" y="{40 + 14*n}" font-size="11" fill="{c}">{name}</text>')
    out.append("</g>")
    return "\n".join(out)


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2*W}" height="{H}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>',
       panel(0, "deliveries/s, 128 B, max rate (mean of runs)", 0, "delivered_msgs_per_s", "higher is better"),
       panel(W, "p99 latency us, 128 B, 20000 msg/s (mean of runs)", 20000, "latency_us.p99", "lower is better"),
       "</svg>"]
open(svg_path, "w").write("\n".join(svg) + "\n")

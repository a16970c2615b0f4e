#!/usr/bin/env python3
"""Turns compare.sh's JSON lines into a markdown table and a small SVG plot."""
import json
import sys

src, md_path, svg_path, cpu, kernel, commit, date, duration, warmup = sys.argv[1:10]
rows = [json.loads(l) for l in open(src) if l.strip()]

def cell(r, key, fmt):
    if r.get("failed"):
        return "failed"
    v = r
    for k in key.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return fmt(v) if v is not None else "-"

lines = [
    f"# msgc vs NATS vs Redis: fanout, {date}",
    "",
    f"- CPU: {cpu}; kernel {kernel}; commit {commit}",
    f"- server and load generator share the machine; {duration} s measured after {warmup} s warm-up per row",
    "- command: `benches/compare.sh` (msgc-bench fanout --threads 2, 1 publisher)",
    "",
    "| system | subs | size | rate | delivered msg/s | payload MB/s | p50 us | p99 us | lost | dups | disc | server CPU % | server RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        r.get("target"), r.get("subscribers"), r.get("size"), r.get("rate") or "max",
        cell(r, "delivered_msgs_per_s", lambda v: f"{v:,.0f}"),
        cell(r, "delivered_payload_mb_per_s", lambda v: f"{v:,.0f}"),
        cell(r, "latency_us.p50", str), cell(r, "latency_us.p99", str),
        cell(r, "lost", str), cell(r, "duplicates", str), cell(r, "disconnects", str),
        cell(r, "server_cpu_percent", lambda v: f"{v:.0f}"),
        cell(r, "server_peak_rss_kib", lambda v: f"{v / 1024:.0f}"),
    ))
open(md_path, "w").write("\n".join(lines) + "\n")

# Plot: deliveries/s (128 B, max rate) and p99 (128 B, 20000 msg/s) against subscribers.
colors = {"msgc": "#1f77b4", "nats": "#2ca02c", "redis": "#d62728"}
W, H, PAD = 420, 260, 50
def panel(x0, title, pick, unit):
    series = {}
    for r in rows:
        if r.get("failed") or r.get("size") != 128:
            continue
        v = pick(r)
        if v is not None:
            series.setdefault(r["target"], []).append((r["subscribers"], v))
    top = max([v for s in series.values() for _, v in s] + [1])
    xs = [1, 8, 64]
    out = [f'<g transform="translate({x0},0)"><text x="{W/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-10}" y2="{H-PAD}" stroke="black"/><line x1="{PAD}" y1="30" x2="{PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<text x="{PAD-5}" y="35" text-anchor="end" font-size="10">{top:,.0f}</text><text x="{PAD-5}" y="{H-PAD}" text-anchor="end" font-size="10">0</text>',
           f'<text x="{W/2}" y="{H-15}" text-anchor="middle" font-size="11">subscribers ({unit})</text>']
    for i, x in enumerate(xs):
        px = PAD + 20 + i * (W - PAD - 50) / 2
        out.append(f'<text x="{px}" y="{H-PAD+15}" text-anchor="middle" font-size="10">{x}</text>')
    for k, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        coords = [(PAD + 20 + xs.index(x) * (W - PAD - 50) / 2, H - PAD - (v / top) * (H - PAD - 35)) for x, v in pts if x in xs]
        c = colors.get(name, "black")
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(c, " ".join(f"{x:.0f},{y:.0f}" for x, y in coords)))
        out.append(f'<text x="{W-60}" y="{40 + 14*k}" font-size="11" fill="{c}">{name}</text>')
    out.append("</g>")
    return "\n".join(out)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2*W}" height="{H}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>',
       panel(0, "deliveries/s, 128 B, max rate", lambda r: r["delivered_msgs_per_s"] if r.get("rate") == 0 else None, "higher is better"),
       panel(W, "p99 latency us, 128 B, 20000 msg/s", lambda r: r["latency_us"]["p99"] if r.get("rate") == 20000 else None, "lower is better"),
       "</svg>"]
open(svg_path, "w").write("\n".join(svg) + "\n")

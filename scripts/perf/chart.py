#!/usr/bin/env python3
"""Draw the ratios of a `just test-fuse-performance` run as an SVG chart.

    chart.py RUN_DIR

Reads RUN_DIR/summary.json and writes RUN_DIR/ratios.svg: for every workload
measured on the host, one bar for AgentFS/host and one for fuse-overlayfs/host
(speed ratios, > 1 faster than the host), on a log scale with the host at 1;
below it the AgentFS-only times (snapshot and branch creation at each tree
size). Standard library only, so it runs wherever python3 does.
"""

import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

COLORS = {"agentfs": "#1f77b4", "overlay": "#ff7f0e"}
LABELS = {"agentfs": "AgentFS / host", "overlay": "fuse-overlayfs / host"}


def main() -> int:
    run_dir = Path(sys.argv[1])
    s = json.loads((run_dir / "summary.json").read_text())
    meta = s.get("meta", {})
    rows = [r for r in s["workloads"] if "host" in r]
    only = [r for r in s["workloads"] if "host" not in r and not r["workload"].startswith("populate")]
    ratios = [r.get(k) for r in rows for k in ("ratio_agentfs_host", "ratio_overlay_host") if r.get(k)]
    lo = max(1e-5, 10 ** math.floor(math.log10(min(ratios + [0.1]))))
    hi = 10 ** math.ceil(math.log10(max(ratios + [2.0])))

    left, plot_w, bar_h, gap = 190, 560, 11, 10
    top = 70
    row_h = 2 * bar_h + gap
    plot_h = row_h * len(rows)
    table_top = top + plot_h + 60
    height = table_top + 30 + 18 * (len(only) + 1) + 40
    width = left + plot_w + 140

    def x(v):
        v = min(max(v, lo), hi)
        return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="10" y="22" font-size="15" font-weight="bold">AgentFS and fuse-overlayfs vs the host '
         f'directory (speed ratio, log scale; 1 = host)</text>',
         f'<text x="10" y="40" fill="#444">{escape(str(meta.get("timestamp", "")))} · '
         f'{escape(str(meta.get("fs_type", "")))} on {escape(str(meta.get("fs_source", "")))} · '
         f'load {escape(str(meta.get("loadavg_before", "")))} · runs {escape(str(meta.get("runs", "")))} · '
         f'data path {escape(str(meta.get("agentfs_data_path", "")))}</text>']
    # Legend.
    lx = left
    for k in ("agentfs", "overlay"):
        o.append(f'<rect x="{lx}" y="50" width="12" height="10" fill="{COLORS[k]}"/>')
        o.append(f'<text x="{lx + 16}" y="59">{LABELS[k]}</text>')
        lx += 170
    # Grid: decades.
    d = math.floor(math.log10(lo))
    while 10 ** d <= hi * 1.0001:
        gx = x(10 ** d)
        strong = d == 0
        o.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{top + plot_h}" '
                 f'stroke="{"#000" if strong else "#ddd"}" stroke-width="{1.5 if strong else 1}"/>')
        o.append(f'<text x="{gx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{10 ** d:g}</text>')
        d += 1
    o.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle" fill="#444">'
             f'ratio to host (higher is faster)</text>')
    for i, r in enumerate(rows):
        y0 = top + i * row_h
        o.append(f'<text x="{left - 8}" y="{y0 + bar_h + 4}" text-anchor="end">{escape(r["workload"])}</text>')
        for j, k in enumerate(("agentfs", "overlay")):
            v = r.get(f"ratio_{k}_host")
            y = y0 + j * bar_h
            if v is None:
                failed = r.get(k, {}).get("median") is None and k in r
                o.append(f'<text x="{left + 4}" y="{y + bar_h - 2}" fill="#b00" font-size="10">'
                         f'{"failed" if failed else "n/a"}</text>')
                continue
            x0, x1 = sorted((x(1.0), x(v)))
            o.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h - 1}" '
                     f'fill="{COLORS[k]}"/>')
            o.append(f'<text x="{max(x1, x(1.0)) + 4:.1f}" y="{y + bar_h - 2}" font-size="10">{v:.3g}</text>')
    # AgentFS-only times.
    o.append(f'<text x="{left}" y="{table_top}" font-size="14" font-weight="bold">AgentFS only: snapshot '
             f'and branch creation (median)</text>')
    yy = table_top + 22
    o.append(f'<text x="{left}" y="{yy}" font-weight="bold">workload</text>'
             f'<text x="{left + 300}" y="{yy}" font-weight="bold" text-anchor="end">median</text>')
    for r in only:
        yy += 18
        med = r.get("agentfs", {}).get("median")
        val = f"{med:.3f} {r.get('unit') or ''}" if med is not None else "failed"
        o.append(f'<text x="{left}" y="{yy}">{escape(r["workload"])}</text>'
                 f'<text x="{left + 300}" y="{yy}" text-anchor="end">{escape(val)}</text>')
    o.append("</svg>")
    (run_dir / "ratios.svg").write_text("\n".join(o) + "\n")
    print(f"chart: {run_dir / 'ratios.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

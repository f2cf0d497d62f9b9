#!/usr/bin/env python3
"""Bar charts of a strake-bench report: one panel per (case, metric), one bar
per variant (median), with each round's value as a dot."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

report = json.load(open(sys.argv[1]))
samples = report["samples"]
panels = []
for s in samples:
    key = (s["case"], s["metric"])
    if key not in panels:
        panels.append(key)
cols = min(3, len(panels))
rows = (len(panels) + cols - 1) // cols
fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
for ax, (case, metric) in zip([a for r in axes for a in r], panels):
    ss = [s for s in samples if s["case"] == case and s["metric"] == metric]
    names = [s["variant"] for s in ss]
    ax.bar(names, [s["median"] for s in ss], color=["#2b6cb0" if n.startswith("strake") else "#a0aec0" for n in names])
    for i, s in enumerate(ss):
        ax.scatter([i] * len(s["values"]), s["values"], color="black", s=8, zorder=3)
    ax.set_title(f"{case}\n{metric} ({ss[0]['unit']})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8, rotation=15)
for ax in [a for r in axes for a in r][len(panels):]:
    ax.axis("off")
fig.suptitle(report["name"], fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)

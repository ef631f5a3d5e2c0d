"""
cnncore against PyTorch, kernel by kernel
=========================================

The profiler ``python -m cnncore.bench`` times cnncore's kernels, their NumPy twins and
PyTorch's CPU kernels side by side in one process. This page draws a **stored** run --
``docs/_static/bench.json``, written by ``python -m cnncore.bench --json`` -- so building
the documentation measures nothing. Each bar is cnncore's median time divided by PyTorch's
for one problem and pass: **below 1, cnncore is faster**. See :doc:`/results` for the
tables, the command and the machine.
"""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

try:
    here = Path(__file__).resolve().parent
except NameError:  # run in a notebook / console
    here = Path.cwd()
run = json.loads((here.parent / "_static" / "bench.json").read_text())
rows = [r for r in run["rows"] if r.get("ratio_torch") is not None]
print(f"{len(rows)} timed rows, {run['settings']['threads']} threads, "
      f"torch {run['torch']['version']}, CPU used by other processes during the run: "
      f"{100 * run.get('other_cpu', 0):.0f} %")

# %%
labels = [f"{r['name']} {r['pass']}" for r in rows]
ratios = np.array([r["ratio_torch"] for r in rows])
colors = ["tab:green" if v < 1 else "tab:red" for v in ratios]

fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
y = np.arange(len(rows))[::-1]
ax.barh(y, ratios, color=colors)
ax.axvline(1, color="k", lw=1)
ax.set_xscale("log")
ax.set_yticks(y, labels, fontsize=8)
ax.set_xlabel("cnncore time / PyTorch time (log scale; < 1: cnncore faster)")
ax.set_title(f"Kernels at {run['settings']['threads']} threads, {run['settings']['dtype']}, "
             f"median of {run['settings']['repeats']}")
ax.grid(True, axis="x", which="both", alpha=0.3)
fig.tight_layout()
plt.show()

# %%
# The LeNet-5 training step
# -------------------------
# A whole step (forward, backward, SGD update) in images per second.

lenet = run["summary"].get("lenet", [])
names = ["cnncore", "layers", "torch", "reference"]
titles = ["cnncore.functional", "cnncore.layers", "torch.nn", "NumPy reference"]
fig, ax = plt.subplots(figsize=(8, 3))
width = 0.8 / max(1, len(lenet))
for i, entry in enumerate(lenet):
    values = [entry.get(n) or 0 for n in names]
    ax.bar(np.arange(len(names)) + i * width, values, width, label=f"batch {entry['batch']}")
ax.set_xticks(np.arange(len(names)) + width * (len(lenet) - 1) / 2, titles)
ax.set_ylabel("images / s")
ax.legend()
fig.tight_layout()
plt.show()

"""--plot: a bar chart of the report (needs matplotlib)."""
import sys

import numpy as np

from .cases import COPY_TARGETS, OPS, shape_str
from .monitor import BUSY


def matplotlib_available():
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def _hatch_busy(patches, cases):
    for patch, c in zip(patches, cases):
        if (c.get("other_load") or 0) > BUSY:
            patch.set_hatch("///")
            patch.set_edgecolor("black")


def plot(cases, path):
    """One row per op: speed-ups over the peers (left), cbn/copy ratios (right), log scales."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        print(f"--plot: matplotlib is not installed, no plot written to {path} "
              f"(pip install matplotlib)", file=sys.stderr)
        return False
    ops = [op for op in OPS if any(c["op"] == op for c in cases)]
    n_max = max(sum(1 for c in cases if c["op"] == op) for op in ops)
    width_in = max(5.0, 0.42 * n_max + 1.5)
    fig, axes = plt.subplots(len(ops), 2, figsize=(2 * width_in, 3.6 * len(ops) + 0.6),
                             squeeze=False)
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    for i, op in enumerate(ops):
        cs = [c for c in cases if c["op"] == op]
        xs = np.arange(len(cs))
        labels = [f"{shape_str(c['shape'])} {c['layout']}" for c in cs]
        ax = axes[i][0]
        series = [("vs PyTorch", "speedup_vs_torch", "tab:orange"),
                  ("vs JAX", "speedup_vs_jax", "tab:purple"),
                  ("vs ONNX Runtime", "speedup_vs_ort", "tab:brown"),
                  ("vs naive NumPy", "speedup_vs_numpy", "tab:blue")]
        series = [sr for sr in series if any(c.get(sr[1]) is not None for c in cs)]
        width = 0.8 / max(1, len(series))
        for k, (label, key, color) in enumerate(series):
            vals = [c[key] if c.get(key) is not None else np.nan for c in cs]
            bars = ax.bar(xs + (k - (len(series) - 1) / 2) * width, vals, width, label=label,
                          color=color)
            ax.bar_label(bars, labels=[("" if np.isnan(v) else f"{v:.1f}") for v in vals],
                         fontsize=6, padding=1)
            _hatch_busy(bars.patches, cs)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"{op}: speed-up of cbn (peer time / cbn time, higher is better)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax = axes[i][1]
        vals = [c["copy_ratio"] for c in cs]
        target = [4e6 <= c["nbytes"] <= 100e6 for c in cs]
        bars = ax.bar(xs, vals, 0.6, color=["tab:green" if t else "silver" for t in target])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=6, padding=1)
        _hatch_busy(bars.patches, cs)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=2))
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(COPY_TARGETS[op], color="tab:red", ls="--", lw=1,
                   label=f"target {COPY_TARGETS[op]} (4-100 MB tensors, green)")
        ax.set_title(f"{op}: cbn time / time of copying x (lower is better)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        for ax in axes[i]:
            ax.yaxis.set_major_formatter(fmt)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=50, ha="right", fontsize=7)
            ax.grid(axis="y", which="major", alpha=0.3)
            ax.margins(y=0.15)
    first = cases[0] if cases else {}
    busy = any((c.get("other_load") or 0) > BUSY for c in cases)
    fig.suptitle(f"cbn batch norm, {first.get('dtype', '')}: {first.get('stat', 'median')}s of "
                 f"interleaved runs" + ("  (hatched: measured while other processes were "
                                        "busy, unreliable)" if busy else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

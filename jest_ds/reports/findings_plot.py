"""Figures of the findings report: speedup and final metric vs filter ratio (paper Fig. 3), and
the chosen vs offered selection shares over training."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jest_ds.reports.speedup_plot import band


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errors(stats: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, [below, above]) for error bars; no bar where there is no interval (one seed)."""
    mean = np.array([s["mean"] for s in stats], dtype=np.float64)
    lo = np.array([s["mean"] - s["lo"] if s["n"] > 1 else 0.0 for s in stats])
    hi = np.array([s["hi"] - s["mean"] if s["n"] > 1 else 0.0 for s in stats])
    return mean, np.stack([lo, hi])


def plot_filter_ratio(groups, baseline, metric: str, path: str | Path) -> None:
    """Two panels vs f, one line per method (and reference when several): iteration speedup to
    IID's final (mean, 95% t-interval) and the final metric."""
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    several_refs = len({g.setting.reference for g in groups}) > 1
    lines: dict[str, list] = {}
    for g in groups:
        name = g.setting.method + (f" ({g.setting.reference})" if several_refs else "")
        lines.setdefault(name, []).append(g)
    for name, members in lines.items():
        f = np.array([g.setting.filter_ratio for g in members])
        sp = [g.stats["iter_speedup"] for g in members]
        keep = [i for i, s in enumerate(sp) if s["n"] > 0 and not math.isnan(s["mean"])]
        if keep:
            mean, err = _errors([sp[i] for i in keep])
            ax0.errorbar(f[keep], mean, yerr=err, marker="o", capsize=3, label=name)
        mean, err = _errors([g.stats["final_score"] for g in members])
        ax1.errorbar(f, mean, yerr=err, marker="o", capsize=3, label=name)
    ax0.axhline(1.0, color="grey", ls="--", lw=1, label="IID")
    ax1.axhline(baseline.stats["final_score"]["mean"], color="grey", ls="--", lw=1, label="IID")
    ax0.set_ylabel("iteration speedup to IID's final")
    ax1.set_ylabel(f"final {metric}")
    for ax in (ax0, ax1):
        ax.set_xlabel("filter ratio f = 1 - b/B")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax0.set_title("mean over seeds, 95% t-interval (seeds that reached)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_selection(groups, path: str | Path) -> None:
    """Noisy and on-target shares vs step, per group: chosen (solid) and offered (dashed), mean over seeds."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind, title in zip(axes, ("noisy", "target"), ("planted caption noise", "on-target examples")):
        for k, g in enumerate(groups):
            colour = colours[k % len(colours)]
            for suffix, style in (("chosen", "-"), ("all", "--")):
                key = f"sel/{kind}_share_{suffix}"
                series = [r.series[key] for r in g.runs if key in r.series]
                if not series:
                    continue
                x, mean, _, _ = band(series)
                seeds = f"{len(series)} seed{'s' if len(series) > 1 else ''}"
                ax.plot(x, mean, style, color=colour, lw=1.5 if suffix == "chosen" else 1.0,
                        label=f"{g.label} ({seeds})" if suffix == "chosen" else None)
        ax.set_xlabel("iterations")
        ax.set_ylabel(f"share of {title}")
        ax.set_title(f"{title}: chosen (solid) vs offered (dashed)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"sel/{kind}_share_* not logged by these runs", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

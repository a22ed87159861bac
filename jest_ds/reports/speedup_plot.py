"""Figures of the speedup report: metric curves (mean and 95% t-band over seeds per group) and the
planted-noise share of the chosen examples vs step."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jest_ds.reports.seed_stats import t_quantile


def band(series: list[tuple[list[float], list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over several (x, y) series at the x values they all share
    (low = high = mean for one series)."""
    common = sorted(set.intersection(*(set(x) for x, _ in series)))
    if not common:
        raise ValueError("speedup report: the seeds of a group share no evaluation step (use one eval_every)")
    ys = np.array([[dict(zip(x, y))[v] for v in common] for x, y in series], dtype=np.float64)
    mean = ys.mean(0)
    if len(series) < 2:
        return np.asarray(common, dtype=np.float64), mean, mean, mean
    half = t_quantile(0.975, len(series) - 1) * ys.std(0, ddof=1) / np.sqrt(len(series))
    return np.asarray(common, dtype=np.float64), mean, mean - half, mean + half


def seeds_label(n_max: int) -> str:
    """What a figure's curves are: "one seed" when no group has more, else the mean and its band."""
    return "one seed" if n_max == 1 else f"mean over {n_max} seeds, 95% t-band"


def _groups(curves) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in curves:
        out.setdefault(c.group, []).append(c)
    return out


def _draw(ax, x, mean, lo, hi, n: int, label: str, colour) -> None:
    ax.plot(x, mean, marker="o" if n == 1 else None, ms=3, color=colour, label=label)
    if n > 1:
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)


def plot_curves(curves, target: float, path: str | Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (group, members) in enumerate(_groups(curves).items()):
        colour = colours[k % len(colours)]
        n = len(members)
        label = f"{group} ({members[0].method}, {n} seed{'s' if n > 1 else ''})"
        x, mean, lo, hi = band([(c.steps, c.scores) for c in members])
        _draw(axes[0], x, mean, lo, hi, n, label, colour)
        _draw(axes[1], x * members[0].batch_size, mean, lo, hi, n, label, colour)
        if all(f == f for c in members for f in c.flops):
            _, flops, _, _ = band([(c.steps, c.flops) for c in members])
            _draw(axes[2], flops, mean, lo, hi, n, label, colour)
    # the y-range of the trained curves: the untrained model's value at step 0 can dwarf them (a loss)
    trained = [v for c in curves for s, v in zip(c.steps, c.scores) if s > 0] + [target]
    lo_y, hi_y = min(trained), max(trained)
    pad = 0.1 * (hi_y - lo_y) or 0.1 * abs(hi_y) or 1.0
    for ax, xlabel in zip(axes, ["iterations", "examples seen (trained on)", "total FLOPs (scoring included)"]):
        ax.set_ylim(lo_y - pad, hi_y + pad)
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{seeds_label(max(len(m) for m in _groups(curves).values()))} (dashed: IID final)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_noise(curves, noise: dict, path: str | Path) -> None:
    """`noise`: run name -> ((steps, chosen share), (steps, offered share))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    offered = []
    for k, (group, members) in enumerate(_groups(curves).items()):
        series = [noise[c.name][0] for c in members if noise[c.name][0][0]]
        if not series:
            continue
        x, mean, lo, hi = band(series)
        _draw(ax, x, mean, lo, hi, len(series), f"{group} ({len(series)} seed{'s' if len(series) > 1 else ''})",
              colours[k % len(colours)])
        offered += [v for c in members for v in noise[c.name][1][1]]
    if offered:
        ax.axhline(float(np.mean(offered)), color="grey", ls="--", lw=1, label="offered (all candidates)")
    ax.set_xlabel("iterations")
    ax.set_ylabel("planted-noise share of the chosen examples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

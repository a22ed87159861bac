"""The benchmark report's figure: held-out R@5 against iterations and against total FLOPs, the
reference as a horizontal line, IID's final as a dashed one; mean and 95% t-band over seeds."""
from __future__ import annotations

from pathlib import Path

from jest_ds.benchmark import HEADLINE_LABEL
from jest_ds.reports.speedup_plot import band, seeds_label


def plot_bootstrap(runs, report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    n_max = max(len(m) for m in groups.values())
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (group, members) in enumerate(groups.items()):
        colour = colours[k % len(colours)]
        n = len(members)
        label = f"{group} ({members[0].method}{'' if n == 1 else f', {n} seeds'})"
        x, mean, lo, hi = band([(m.steps, m.series(report["metric"])) for m in members])
        for ax, xs in ((axes[0], x), (axes[1], None)):
            if xs is None:
                if not all(f == f for m in members for f in m.flops):
                    continue
                _, xs, _, _ = band([(m.steps, m.flops) for m in members])
            ax.plot(xs, mean, color=colour, label=label, marker="o" if n == 1 else None, ms=2)
            if n > 1:
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0)
    ref = report.get("reference")
    iid_final = [s["target"] for s in report["runs"]]
    for ax in axes:
        if ref:
            ax.axhline(ref["r5"], color="black", lw=1.5, label=f"reference (curated set): {ref['r5']:.4f}")
        if iid_final:
            ax.axhline(sum(iid_final) / len(iid_final), color="grey", ls="--", lw=1, label="IID's final")
        ax.set_ylabel(HEADLINE_LABEL)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("total FLOPs (scoring included; the reference's one-off cost excluded)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Data-quality bootstrapping on the embedded benchmark ({seeds_label(n_max)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

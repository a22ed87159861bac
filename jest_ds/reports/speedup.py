"""Speedup to the IID baseline: iterations, examples and FLOPs each run needs to first reach
the IID run's FINAL held-out score (linear interpolation between evaluations) — the paper's
Figure 1 (left) and Figure 3, on our data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jest_ds.train.metrics import read_metrics


@dataclass
class Curve:
    name: str
    steps: list[int]
    scores: list[float]
    flops: list[float]  # cumulative ledger FLOPs (scoring included) at each evaluation, when logged
    batch_size: int
    method: str

    @property
    def final(self) -> float:
        return self.scores[-1]


def load_curve(run_dir: str | Path, metric: str = "eval/score") -> Curve:
    import yaml

    run = Path(run_dir)
    rows = [r for r in read_metrics(run) if metric in r]
    if not rows:
        raise ValueError(f"{run}: metrics.jsonl has no {metric!r} records")
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    sel = cfg.get("selection", {})
    method = sel.get("method", "?")
    if method != "iid":
        method = f"{'flexi-' if sel.get('flexi') else ''}{method} f={sel.get('filter_ratio')}"
    return Curve(name=run.name, steps=[r["step"] for r in rows], scores=[r[metric] for r in rows],
                 flops=[r.get("flops/total", float("nan")) for r in rows],
                 batch_size=cfg.get("train", {}).get("batch_size", 0), method=method)


def first_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x at which the piecewise-linear curve (xs, ys) reaches `target` (None if never)."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0)) if y != y0 else float(x)
    return None


def speedup_table(curves: list[Curve], baseline: str | None = None) -> tuple[list[dict], Curve]:
    """One row per run: final score, iterations/FLOPs to the baseline's final score and the ratios."""
    base = next((c for c in curves if c.name == baseline), None) if baseline else \
        next((c for c in curves if c.method == "iid"), None)
    if base is None:
        raise ValueError("speedup report: no IID baseline run among the inputs (or --baseline not found)")
    target = base.final
    base_iters = first_reach(base.steps, base.scores, target)
    base_flops = first_reach(base.flops, base.scores, target) if _has_flops(base) else None
    rows = []
    for c in curves:
        it = first_reach(c.steps, c.scores, target)
        fl = first_reach(c.flops, c.scores, target) if _has_flops(c) else None
        rows.append({
            "run": c.name, "method": c.method, "final_score": c.final, "steps": c.steps[-1],
            "iters_to_target": it, "examples_to_target": None if it is None else it * c.batch_size,
            "iter_speedup": None if it in (None, 0) or base_iters is None else base_iters / it,
            "flops_to_target": fl,
            "flop_speedup": None if fl in (None, 0) or base_flops is None else base_flops / fl,
        })
    return rows, base


def _has_flops(c: Curve) -> bool:
    return all(f == f for f in c.flops)  # no NaN


def _fmt(v, spec: str, suffix: str = "", reached_at_start: bool = False) -> str:
    if v is None:
        return "n/a (at start)" if reached_at_start else "not reached"
    return format(v, spec) + suffix


def markdown(rows: list[dict], base: Curve, metric: str = "eval/score") -> str:
    lines = [f"Target: the IID run `{base.name}`'s final {metric} = {base.final:.4f} (at step {base.steps[-1]}).", "",
             "| run | method | final score | iters to target | examples to target | iteration speedup | "
             "FLOPs to target | FLOP speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at_start = r["iters_to_target"] == 0  # the target is met before any training: no ratio
        lines.append(f"| {r['run']} | {r['method']} | {r['final_score']:.4f} | {_fmt(r['iters_to_target'], '.0f')} | "
                     f"{_fmt(r['examples_to_target'], '.0f')} | {_fmt(r['iter_speedup'], '.2f', '×', at_start)} | "
                     f"{_fmt(r['flops_to_target'], '.3g')} | {_fmt(r['flop_speedup'], '.2f', '×', at_start)} |")
    return "\n".join(lines)


def plot(curves: list[Curve], base: Curve, path: str | Path, metric: str = "eval/score") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for c in curves:
        axes[0].plot(c.steps, c.scores, marker="o", ms=3, label=f"{c.name} ({c.method})")
        axes[1].plot([s * c.batch_size for s in c.steps], c.scores, marker="o", ms=3, label=c.name)
        if _has_flops(c):
            axes[2].plot(c.flops, c.scores, marker="o", ms=3, label=c.name)
    for ax, xlabel in zip(axes, ["iterations", "examples seen (trained on)", "total FLOPs (scoring included)"]):
        ax.axhline(base.final, color="grey", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("score vs iterations (dashed: IID final)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dirs: list[str | Path], out_dir: str | Path, metric: str = "eval/score",
                 baseline: str | None = None) -> str:
    curves = [load_curve(r, metric) for r in run_dirs]
    rows, base = speedup_table(curves, baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, base, metric)
    (out / "speedup.md").write_text(text + "\n\n![speedup](speedup.png)\n")
    plot(curves, base, out / "speedup.png", metric)
    import json

    (out / "speedup.json").write_text(json.dumps(rows, indent=2))
    return text

"""Speedup to the IID baseline: iterations, examples and FLOPs each run needs to first reach the
IID run's FINAL held-out value of a metric — the paper's Figure 1 (left) and Figure 3, on our data.

* Reaching: the first point where the piecewise-linear curve through the evaluations gets to the
  target: ``>=`` for a score, ``<=`` for a loss (a metric whose last path component contains
  "loss", e.g. ``eval/<set>/val_loss``; ``direction`` overrides).
* Seeds: runs are grouped by method — by default their directory name without a trailing
  ``_s<seed>`` (``iid_s0, iid_s1`` → ``iid``), or the config's method label
  (``group_by="method"``) — and each run's seed is read from its config.yaml (``train.seed``).
  Ratios are PAIRED by seed: a run's target is the final value of the baseline run with the
  same seed, its speedups are that run's iterations (FLOPs) to its own final value divided by
  this run's, per seed. A group reports the mean and the two-sided 95% Student-t interval over
  its seeds of each quantity, over the seeds that reached their target (the count is shown);
  seeds with no baseline run of the same seed are left out and named. A lone baseline run
  (one seed) is every run's baseline.
* One run per group (one seed) gives the single-baseline table, labelled as one seed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from jest_ds.benchmark import HEADLINE
from jest_ds.reports.seed_stats import mean_interval
from jest_ds.train.metrics import read_metrics

SEED_SUFFIX = re.compile(r"_s(\d+)$")
NOISE_CHOSEN, NOISE_OFFERED = "sel/noisy_share_chosen", "sel/noisy_share_all"


@dataclass
class Curve:
    name: str
    steps: list[int]
    scores: list[float]
    flops: list[float]  # cumulative ledger FLOPs (scoring included) at each evaluation, when logged
    batch_size: int
    method: str
    seed: int | None = None
    group: str = ""

    @property
    def final(self) -> float:
        return self.scores[-1]


def run_group(name: str) -> str:
    """A run directory's name without its seed suffix: ``jest_f0.5_s3`` -> ``jest_f0.5``."""
    return SEED_SUFFIX.sub("", name)


def method_label(cfg: dict) -> str:
    sel = cfg.get("selection", {})
    method = sel.get("method", "?")
    part = cfg.get("data", {}).get("train_part", "pool")
    if method == "iid" and part != "pool" and not cfg.get("data", {}).get("train_shards"):
        method = f"iid on {part}"  # a baseline on another part of the embedded dataset (curated, pool+curated)
    elif method != "iid":
        method = f"{'flexi-' if sel.get('flexi') else ''}{method} f={sel.get('filter_ratio')}"
    return method


def load_curve(run_dir: str | Path, metric: str = HEADLINE, group_by: str = "name") -> Curve:
    import yaml

    run = Path(run_dir)
    rows = [r for r in read_metrics(run) if metric in r]
    if not rows:
        raise ValueError(f"{run}: metrics.jsonl has no {metric!r} records")
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    method = method_label(cfg)
    seed = cfg.get("train", {}).get("seed")
    return Curve(name=run.name, steps=[r["step"] for r in rows], scores=[r[metric] for r in rows],
                 flops=[r.get("flops/total", float("nan")) for r in rows],
                 batch_size=cfg.get("train", {}).get("batch_size", 0), method=method,
                 seed=None if seed is None else int(seed),
                 group=method if group_by == "method" else run_group(run.name))


def load_series(run_dir: str | Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a logged key (empty lists when the run never logged it)."""
    rows = [r for r in read_metrics(run_dir) if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def lower_is_better(metric: str, direction: str = "auto") -> bool:
    if direction not in ("auto", "higher", "lower"):
        raise ValueError(f"direction {direction!r}: must be auto, higher or lower")
    return direction == "lower" or (direction == "auto" and "loss" in metric.rsplit("/", 1)[-1])


def first_reach(xs: list[float], ys: list[float], target: float, lower: bool = False) -> float | None:
    """The first x at which the piecewise-linear curve (xs, ys) reaches `target` (None if never):
    y >= target, or y <= target when `lower`."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if (y <= target) if lower else (y >= target):
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0)) if y != y0 else float(x)
    return None


def _has_flops(c: Curve) -> bool:
    return all(f == f for f in c.flops)  # no NaN


# ---------------------------------------------------------------------------- baselines and rows

def baseline_group(curves: list[Curve], baseline: str | None) -> str:
    """The group holding the baseline: the one named (a run or group name), else the IID runs'."""
    if baseline:
        for c in curves:
            if baseline in (c.name, c.group):
                return c.group
        raise ValueError(f"speedup report: --baseline {baseline!r} matches no run or group")
    for c in curves:
        if c.method == "iid":
            return c.group
    raise ValueError("speedup report: no IID baseline run among the inputs (or --baseline not found)")


def paired_baselines(curves: list[Curve], base_group: str) -> dict[str, Curve]:
    """Run name -> the baseline run with the same seed (any baseline run when there is only one)."""
    bases = [c for c in curves if c.group == base_group]
    by_seed = {b.seed: b for b in bases}  # one run per seed in a group: `check_unique`
    out = {}
    for c in curves:
        if len(bases) == 1:
            out[c.name] = bases[0]
        elif c.seed in by_seed:
            out[c.name] = by_seed[c.seed]
    return out


def run_row(c: Curve, base: Curve, lower: bool) -> dict:
    target = base.final
    base_iters = first_reach(base.steps, base.scores, target, lower)
    base_flops = first_reach(base.flops, base.scores, target, lower) if _has_flops(base) else None
    it = first_reach(c.steps, c.scores, target, lower)
    fl = first_reach(c.flops, c.scores, target, lower) if _has_flops(c) else None
    return {"run": c.name, "group": c.group, "method": c.method, "seed": c.seed, "baseline": base.name,
            "target": target, "final_score": c.final, "steps": c.steps[-1],
            "iters_to_target": it, "examples_to_target": None if it is None else it * c.batch_size,
            "iter_speedup": None if it in (None, 0) or base_iters is None else base_iters / it,
            "flops_to_target": fl,
            "flop_speedup": None if fl in (None, 0) or base_flops is None else base_flops / fl}


def check_unique(curves: list[Curve]) -> None:
    """Run names are unique, and so are the seeds within a group."""
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        raise ValueError(f"speedup report: two runs named {next(n for n in names if names.count(n) > 1)!r}")
    for group in dict.fromkeys(c.group for c in curves):
        seeds = [c.seed for c in curves if c.group == group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"speedup report: group {group!r} has two runs with seed "
                             f"{next(s for s in seeds if seeds.count(s) > 1)}")


def speedup_table(curves: list[Curve], baseline: str | None = None, lower: bool = False) -> tuple[list[dict], Curve]:
    """One row per run (against its own-seed baseline) and the first baseline run."""
    check_unique(curves)
    group = baseline_group(curves, baseline)
    bases = paired_baselines(curves, group)
    rows = [run_row(c, bases[c.name], lower) for c in curves if c.name in bases]
    return rows, next(c for c in curves if c.group == group)


STATS = ("final_score", "iters_to_target", "examples_to_target", "iter_speedup", "flops_to_target", "flop_speedup")


def group_rows(curves: list[Curve], run_rows: list[dict]) -> list[dict]:
    """Per group (in input order): seeds, paired/reached counts, mean and 95% t-interval of each STAT."""
    by_run = {r["run"]: r for r in run_rows}
    out = []
    for group in dict.fromkeys(c.group for c in curves):
        members = [c for c in curves if c.group == group]
        paired = [by_run[c.name] for c in members if c.name in by_run]
        reached = [r for r in paired if r["iters_to_target"] is not None]
        row = {"group": group, "method": members[0].method, "seeds": [c.seed for c in members],
               "unpaired": [c.name for c in members if c.name not in by_run],
               "paired": len(paired), "reached": len(reached)}
        for key in STATS:
            source = paired if key == "final_score" else reached
            vals = [r[key] for r in source if r[key] is not None]
            mean, lo, hi = mean_interval(vals)
            row[key] = {"mean": mean, "lo": lo, "hi": hi, "n": len(vals)}
        out.append(row)
    return out


# ---------------------------------------------------------------------------- markdown

def _fmt(v, spec: str, suffix: str = "", reached_at_start: bool = False) -> str:
    if v is None:
        return "n/a (at start)" if reached_at_start else "not reached"
    return format(v, spec) + suffix


def markdown(rows: list[dict], base: Curve, metric: str = HEADLINE, lower: bool = False) -> str:
    """The per-run table against one baseline run (one seed)."""
    reach = "≤" if lower else "≥"
    lines = [f"Target: the IID run `{base.name}`'s final {metric} = {base.final:.4f} (at step {base.steps[-1]}); "
             f"reached when {reach} target. One seed.", "",
             "| run | method | final score | iters to target | examples to target | iteration speedup | "
             "FLOPs to target | FLOP speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at_start = r["iters_to_target"] == 0  # the target is met before any training: no ratio
        lines.append(f"| {r['run']} | {r['method']} | {r['final_score']:.4f} | {_fmt(r['iters_to_target'], '.0f')} | "
                     f"{_fmt(r['examples_to_target'], '.0f')} | {_fmt(r['iter_speedup'], '.2f', '×', at_start)} | "
                     f"{_fmt(r['flops_to_target'], '.3g')} | {_fmt(r['flop_speedup'], '.2f', '×', at_start)} |")
    return "\n".join(lines)


def _stat(s: dict, spec: str, suffix: str = "", reached: int = 0) -> str:
    if s["n"] == 0:  # a ratio has no value for seeds that met the target before training
        return "n/a (at start)" if reached else "not reached"
    text = format(s["mean"], spec) + suffix
    if s["n"] > 1:
        text += f" [{format(s['lo'], spec)}, {format(s['hi'], spec)}]"
    return text


def markdown_groups(groups: list[dict], runs: list[dict], metric: str, lower: bool) -> str:
    reach = "≤" if lower else "≥"
    lines = [f"Target per seed: the final {metric} of the baseline run with the same seed (train.seed); reached "
             f"when {reach} target. Mean over seeds with the two-sided 95% Student-t interval in brackets; speedups "
             "are per-seed ratios (paired by seed) averaged over the seeds that reached the target.", "",
             "| group | method | seeds | final | reached | iters to target | examples to target | iteration speedup | "
             "FLOPs to target | FLOP speedup |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        seeds = ",".join(str(s) for s in g["seeds"])
        if g["unpaired"]:
            seeds += f" (unpaired: {', '.join(g['unpaired'])})"
        lines.append(f"| {g['group']} | {g['method']} | {seeds} | {_stat(g['final_score'], '.4f')} | "
                     f"{g['reached']}/{g['paired']} | {_stat(g['iters_to_target'], '.0f')} | "
                     f"{_stat(g['examples_to_target'], '.0f')} | {_stat(g['iter_speedup'], '.2f', '×', g['reached'])} | "
                     f"{_stat(g['flops_to_target'], '.3g')} | {_stat(g['flop_speedup'], '.2f', '×', g['reached'])} |")
    lines += ["", "Per run (against the baseline run of its seed):", "",
              "| run | seed | target | final | iters to target | iteration speedup | FLOP speedup |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        at_start = r["iters_to_target"] == 0
        lines.append(f"| {r['run']} | {r['seed']} | {r['target']:.4f} | {r['final_score']:.4f} | "
                     f"{_fmt(r['iters_to_target'], '.0f')} | {_fmt(r['iter_speedup'], '.2f', '×', at_start)} | "
                     f"{_fmt(r['flop_speedup'], '.2f', '×', at_start)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the report

def write_report(run_dirs: list[str | Path], out_dir: str | Path, metric: str = HEADLINE,
                 baseline: str | None = None, direction: str = "auto", group_by: str = "name") -> str:
    """speedup.md, speedup.png (curves; bands over seeds), speedup.json (per run) and, with several
    seeds, speedup_groups.json; selection.png when the runs logged the planted-noise share."""
    from jest_ds.reports.speedup_plot import plot_curves, plot_noise

    if group_by not in ("name", "method"):
        raise ValueError(f"group_by {group_by!r}: must be name or method")
    lower = lower_is_better(metric, direction)
    curves = [load_curve(r, metric, group_by) for r in run_dirs]
    rows, base = speedup_table(curves, baseline, lower)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    multi_seed = any(sum(c.group == g for c in curves) > 1 for g in {c.group for c in curves})
    if multi_seed:
        groups = group_rows(curves, rows)
        text = markdown_groups(groups, rows, metric, lower)
        (out / "speedup_groups.json").write_text(json.dumps(_nan_to_none(groups), indent=2))
    else:
        text = markdown(rows, base, metric, lower)
    base_finals = [c.final for c in curves if c.group == base.group]
    plot_curves(curves, sum(base_finals) / len(base_finals), out / "speedup.png", metric)
    figures = "![speedup](speedup.png)"
    noise = {c.name: (load_series(r, NOISE_CHOSEN), load_series(r, NOISE_OFFERED)) for c, r in zip(curves, run_dirs)}
    if any(chosen[0] for chosen, _ in noise.values()):
        plot_noise(curves, noise, out / "selection.png")
        figures += "\n\n![planted-noise share chosen](selection.png)"
    (out / "speedup.md").write_text(text + "\n\n" + figures + "\n")
    (out / "speedup.json").write_text(json.dumps(_nan_to_none(rows), indent=2))
    return text


def _nan_to_none(obj):
    """NaN (no interval from one seed) as JSON null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj

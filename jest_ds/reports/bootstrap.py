"""The benchmark's headline report: data-quality bootstrapping on held-out target retrieval.

JEST's claim, as its users read it: a reference trained on a small curated set steers a learner on
a large noisy pool, and the learner ends better than the reference and better than anything the
curated set gives alone, with far less compute than IID training. This report puts every part of
that claim in one table, on the headline metric (`Benchmark.headline`, held-out R@5 of the target):

* per method (runs grouped by name without ``_s<seed>``, seeds as repeats): the final R@5, the R@5
  at the run's best evaluation on the validation set (model selection, never the test set), R@1,
  zero-shot top-1, iterations and total FLOPs (scoring included) to reach the IID run's final R@5
  of the same seed and the speedups, iterations to pass the reference's R@5, and final R@5 over
  the reference's;
* the reference's row: its R@5 at the evaluation it exported;
* a footer with the reference's one-off cost (training, and caching its embeddings for the pool)
  and the number of learner runs after which each method has paid it back;
* what selection gives up: the off-target evaluation sets per method;
* a plot of R@5 against iterations and against FLOPs, with the reference as a line.

Means carry two-sided 95% Student-t intervals over seeds; a table from one seed says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from jest_ds.benchmark import EMBEDDED, HEADLINE_LABEL, Benchmark
from jest_ds.reports.seed_stats import mean_interval
from jest_ds.reports.speedup import first_reach, method_label, run_group
from jest_ds.train.metrics import read_metrics


@dataclass
class Run:
    """One run's evaluations (every record that holds the headline metric)."""
    path: Path
    name: str
    group: str
    method: str
    seed: int | None
    batch_size: int
    reference: str  # selection.reference of the run's config ("" for IID runs)
    rows: list[dict] = field(default_factory=list)
    bench: Benchmark = EMBEDDED

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.rows]

    def series(self, key: str) -> list[float | None]:
        return [self.bench.value(r, key) for r in self.rows]

    @property
    def flops(self) -> list[float]:
        return [float(r.get("flops/total", math.nan)) for r in self.rows]

    def final(self, key: str) -> float | None:
        return self.bench.value(self.rows[-1], key)

    def best_row(self) -> dict:
        """The evaluation a user would keep: the best validation R@5 (the first on ties); the last
        evaluation when the run logged no validation set."""
        key = self.bench.selection
        scored = [(r[key], -i) for i, r in enumerate(self.rows) if key in r]
        if not scored:
            return self.rows[-1]
        return self.rows[-max(scored)[1]]


def load_run(run_dir: str | Path, bench: Benchmark = EMBEDDED) -> Run:
    import yaml

    path = Path(run_dir)
    rows = [r for r in read_metrics(path) if bench.headline in r]
    if not rows:
        raise ValueError(f"{path}: metrics.jsonl has no {bench.headline!r} records (was the run evaluated?)")
    cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    seed = cfg.get("train", {}).get("seed")
    sel = cfg.get("selection", {})
    return Run(path=path, name=path.name, group=run_group(path.name), method=method_label(cfg),
               seed=None if seed is None else int(seed), batch_size=int(cfg.get("train", {}).get("batch_size", 0)),
               reference=sel.get("reference", "") if sel.get("method", "iid") != "iid" else "", rows=rows, bench=bench)


@dataclass
class Reference:
    """The reference model's run: its R@5 where it exported, and its one-off cost."""
    name: str
    step: int
    r5: float
    r1: float | None
    zeroshot: float | None
    train_flops: float  # every step it trained, up to its plateau stop (not only up to the exported step)
    cache_flops: float  # one forward per pool sample to cache its embeddings
    cache_rows: int


def load_reference(ref_run: str | Path, cache_dir: str | Path | None = None, bench: Benchmark = EMBEDDED) -> Reference:
    """``ref_run``: the reference's run directory (metrics.jsonl, summary.json, config.yaml)."""
    import yaml

    from jest_ds.config import ModelConfig
    from jest_ds.flops import learner_forward_flops

    path = Path(ref_run)
    records = read_metrics(path)
    evals = [r for r in records if bench.headline in r]
    if not evals:
        raise ValueError(f"reference {path}: metrics.jsonl has no {bench.headline!r} records")
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    step = summary.get("step", evals[-1]["step"])
    at = next((r for r in evals if r["step"] == step), evals[-1])
    train_flops = max((float(r["flops/total"]) for r in records if "flops/total" in r), default=math.nan)
    rows = 0
    cache_flops = math.nan
    header = Path(cache_dir) / "reference_cache.json" if cache_dir else None
    if header is not None and header.is_file():
        rows = int(json.loads(header.read_text())["rows"])
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        model = ModelConfig(**cfg["model"])
        cache_flops = float(rows * learner_forward_flops(model))
    return Reference(name=path.name, step=int(at["step"]), r5=float(at[bench.headline]), r1=bench.value(at, "R@1"),
                     zeroshot=at.get(bench.zeroshot_top1), train_flops=train_flops, cache_flops=cache_flops,
                     cache_rows=rows)


# ---------------------------------------------------------------------------- per run, per group

def run_stats(run: Run, base: Run, ref: Reference | None) -> dict:
    """One run against the IID run of its seed (``base``) and the reference."""
    bench = run.bench
    target = base.final(bench.headline)
    r5 = run.series(bench.headline)
    base_iters = first_reach(base.steps, base.series(bench.headline), target)
    base_flops = first_reach(base.flops, base.series(bench.headline), target)
    it = first_reach(run.steps, r5, target)
    fl = first_reach(run.flops, r5, target) if all(f == f for f in run.flops) else None
    best = run.best_row()
    out = {"run": run.name, "group": run.group, "method": run.method, "seed": run.seed, "baseline": base.name,
           "steps": run.steps[-1], "target": target,
           "final_r5": run.final(bench.headline), "final_r1": run.final("R@1"),
           "final_zeroshot": run.final(bench.zeroshot_top1), "best_step": best["step"], "best_r5": best[bench.headline],
           "iters_to_iid": it, "flops_to_iid": fl,
           "iter_speedup": None if it in (None, 0) or base_iters is None else base_iters / it,
           "flop_speedup": None if fl in (None, 0) or base_flops is None or base_flops != base_flops else base_flops / fl,
           "base_flops_to_iid": base_flops,
           "off_target": {label: run.final(key) for label, key in bench.off_target.items()},
           "off_target_chance": {label: run.final(chance_key(key)) for label, key in bench.off_target.items()}}
    if ref is not None:
        out["iters_to_ref"] = first_reach(run.steps, r5, ref.r5)
        out["flops_to_ref"] = first_reach(run.flops, r5, ref.r5) if all(f == f for f in run.flops) else None
        out["final_over_ref"] = out["final_r5"] / ref.r5 if ref.r5 > 0 else None
        out["best_over_ref"] = out["best_r5"] / ref.r5 if ref.r5 > 0 else None
    return out


def chance_key(key: str) -> str:
    """The logged chance level of a metric: ``eval/<set>/top1`` -> ``chance_top1``, a retrieval
    headline (mean R@5) -> ``chance_R@5``."""
    head, last = key.rsplit("/", 1)
    return f"{head}/chance_{'R@5' if last == 'headline' else last}"


STATS = ("final_r5", "best_r5", "best_step", "final_r1", "final_zeroshot", "iters_to_iid", "iter_speedup",
         "flops_to_iid", "flop_speedup", "iters_to_ref", "flops_to_ref", "final_over_ref", "best_over_ref")
REACH = {"iters_to_iid", "iter_speedup", "flops_to_iid", "flop_speedup"}  # over the seeds that reached IID's final


def group_stats(stats: list[dict], bench: Benchmark = EMBEDDED) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for s in stats:
        groups.setdefault(s["group"], []).append(s)
    out = []
    for group, members in groups.items():
        row = {"group": group, "method": members[0]["method"], "seeds": [m["seed"] for m in members],
               "n": len(members), "reached_iid": sum(m["iters_to_iid"] is not None for m in members),
               "passed_ref": sum(m.get("iters_to_ref") is not None for m in members)}
        for key in STATS:
            vals = [m.get(key) for m in members]
            vals = [v for v in vals if v is not None and v == v]
            mean, lo, hi = mean_interval(vals)
            row[key] = {"mean": mean, "lo": lo, "hi": hi, "n": len(vals)}
        row["off_target"] = {}
        for label in bench.off_target:
            vals = [m["off_target"][label] for m in members if m["off_target"].get(label) is not None]
            mean, lo, hi = mean_interval(vals)
            row["off_target"][label] = {"mean": mean, "lo": lo, "hi": hi, "n": len(vals)}
        out.append(row)
    return out


def bootstrap_report(run_dirs: list[str | Path], reference_run: str | Path | None = None,
                     reference_cache: str | Path | None = None, bench: Benchmark = EMBEDDED) -> dict:
    """Everything the markdown and the plot show, as plain data."""
    runs = [load_run(d, bench) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark report: two runs named {next(n for n in names if names.count(n) > 1)!r}")
    iid = [r for r in runs if r.method == "iid"]
    if not iid:
        raise ValueError("benchmark report: no IID run on the pool among the inputs (its final R@5 is the target)")
    if reference_run is None:
        refs = sorted({r.reference for r in runs if r.reference})
        if refs:
            reference_run = Path(refs[0]).parent  # the demo's layout: <reference run>/export
    ref = load_reference(reference_run, reference_cache, bench) if reference_run else None
    by_seed = {r.seed: r for r in iid}
    stats = []
    for r in runs:
        base = iid[0] if len(iid) == 1 else by_seed.get(r.seed)
        if base is not None:
            stats.append(run_stats(r, base, ref))
    groups = group_stats(stats, bench)
    # the strongest baseline a sceptic would keep without selection: the reference, or any run that does
    # not select (IID on the pool, the curated set alone, ...) at its best validation evaluation
    selecting = {r.group for r in runs if r.reference}
    bars = [(g["best_r5"]["mean"], g["group"]) for g in groups if g["group"] not in selecting]
    if ref is not None:
        bars.append((ref.r5, "the reference"))
    strongest = max(bars)
    for s_ in stats:
        run = next(r for r in runs if r.name == s_["run"])
        s_["iters_to_strongest"] = first_reach(run.steps, run.series(bench.headline), strongest[0])
    for g in groups:
        vals = [s_["iters_to_strongest"] for s_ in stats if s_["group"] == g["group"]]
        reached = [v for v in vals if v is not None]
        mean, lo, hi = mean_interval(reached)
        g["iters_to_strongest"] = {"mean": mean, "lo": lo, "hi": hi, "n": len(reached)}
        g["reached_strongest"] = len(reached)
    one_off = None if ref is None else ref.train_flops + (0.0 if ref.cache_flops != ref.cache_flops else ref.cache_flops)
    for g in groups:  # payback: the reference's one-off cost over what one run saves to IID's final
        if g["group"] not in selecting:
            g["flops_saved_per_run"] = g["payback_runs"] = None  # it does not use the reference
            continue
        members = [s for s in stats if s["group"] == g["group"]]
        saved = [s["base_flops_to_iid"] - s["flops_to_iid"] for s in members
                 if s["flops_to_iid"] is not None and s["base_flops_to_iid"] is not None]
        mean_saved = sum(saved) / len(saved) if saved else None
        g["flops_saved_per_run"] = mean_saved
        g["payback_runs"] = (one_off / mean_saved) if one_off and mean_saved and mean_saved > 0 else None
    return {"metric": bench.headline, "selection": bench.selection, "off_target": list(bench.off_target),
            "runs": stats, "groups": groups, "strongest": {"r5": strongest[0], "name": strongest[1]},
            "reference": None if ref is None else ref.__dict__, "reference_one_off_flops": one_off}


# ---------------------------------------------------------------------------- markdown

def _cell(s: dict, spec: str, suffix: str = "") -> str:
    if s["n"] == 0 or s["mean"] != s["mean"]:
        return "—"
    text = format(s["mean"], spec) + suffix
    if s["n"] > 1 and s["lo"] == s["lo"]:
        text += f" [{format(s['lo'], spec)}, {format(s['hi'], spec)}]"
    return text


def _opt(v, spec: str, suffix: str = "") -> str:
    return "—" if v is None or v != v else format(v, spec) + suffix


def markdown(report: dict) -> str:
    groups, ref = report["groups"], report["reference"]
    n_max = max(g["n"] for g in groups)
    seeds = "one seed" if n_max == 1 else f"mean over {n_max} seeds, 95% t-interval in brackets"
    steps = sorted({s["steps"] for s in report["runs"]})
    lines = [f"Headline: {HEADLINE_LABEL} (`{report['metric']}`, mean of both directions), {seeds}; "
             f"{'/'.join(str(s) for s in steps)} iterations per run. Speedups are paired by seed: iterations "
             "(total FLOPs, scoring included) the IID run needs to reach its own final R@5 over what this run "
             "needs. \"best\" is the run's evaluation with the best validation R@5 "
             f"(`{report['selection']}`, never the test set); a best above final means the run peaked and fell "
             "back.", "",
             "| method | seeds | final R@5 | best R@5 (step) | R@1 | zero-shot top-1 | iters to IID's final | "
             "iteration speedup | FLOP speedup | iters (FLOPs) to pass the reference | final ÷ reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        reach = f" ({g['reached_iid']}/{g['n']} reached)" if g["reached_iid"] < g["n"] else ""
        passed = f" ({g['passed_ref']}/{g['n']} passed)" if ref and g["passed_ref"] < g["n"] else ""
        lines.append(
            f"| {g['group']} ({g['method']}) | {g['n']} | {_cell(g['final_r5'], '.4f')} | "
            f"{_cell(g['best_r5'], '.4f')} ({_cell(g['best_step'], '.0f')}) | {_cell(g['final_r1'], '.4f')} | "
            f"{_cell(g['final_zeroshot'], '.3f')} | {_cell(g['iters_to_iid'], '.0f')}{reach} | "
            f"{_cell(g['iter_speedup'], '.2f', '×')} | {_cell(g['flop_speedup'], '.2f', '×')} | "
            f"{_cell(g['iters_to_ref'], '.0f') if ref else '—'}{passed} "
            f"({_cell(g['flops_to_ref'], '.3g') if ref else '—'} FLOPs) | "
            f"{_cell(g['final_over_ref'], '.2f', '×') if ref else '—'} |")
    if ref:
        lines.append(f"| reference ({ref['name']}, curated set, exported at step {ref['step']}) | 1 | "
                     f"{ref['r5']:.4f} | {ref['r5']:.4f} ({ref['step']}) | {_opt(ref['r1'], '.4f')} | "
                     f"{_opt(ref['zeroshot'], '.3f')} | — | — | — | — | 1.00× |")
        lines += ["", f"The reference's one-off cost (not in the FLOP speedups above): training "
                  f"{ref['train_flops']:.3g} FLOPs (every step to its plateau stop), caching its embeddings for "
                  f"{ref['cache_rows']:,} pool samples {_opt(ref['cache_flops'], '.3g')} FLOPs; together "
                  f"{_opt(report['reference_one_off_flops'], '.3g')} FLOPs."]
        pay = [f"{g['group']} {g['payback_runs']:.1f}" for g in groups if g.get("payback_runs")]
        if pay:
            lines.append("Learner runs after which the FLOPs each saves to IID's final R@5 have paid it back: "
                         + ", ".join(pay) + ".")
    bar = report["strongest"]
    reach = [f"{g['group']} {_cell(g['iters_to_strongest'], '.0f')}"
             + (f" ({g['reached_strongest']}/{g['n']} reached)" if g["reached_strongest"] < g["n"] else "")
             for g in groups]
    lines += ["", f"The strongest baseline without selection is {bar['name']} (R@5 {bar['r5']:.4f}, at its best "
              "validation evaluation). Iterations each method needs to reach it: " + ", ".join(reach) + "."]
    off = report["off_target"]
    if off:
        lines += ["", "What steering toward the target gives up — final scores on the evaluation sets outside the "
                  "target (higher is better):", "",
                  "| method | " + " | ".join(off) + " |", "|---|" + "---|" * len(off)]
        for g in groups:
            lines.append(f"| {g['group']} | " + " | ".join(_cell(g["off_target"][k], ".3f") for k in off) + " |")
        chance = report["runs"][0]["off_target_chance"]
        lines.append("| chance | " + " | ".join(_opt(chance.get(k), ".3f") for k in off) + " |")
    return "\n".join(lines)


def write_report(run_dirs: list[str | Path], out_dir: str | Path, reference_run: str | Path | None = None,
                 reference_cache: str | Path | None = None, bench: Benchmark = EMBEDDED) -> str:
    """bootstrap.md, bootstrap.json and bootstrap.png in ``out_dir``; returns the markdown."""
    from jest_ds.reports.bootstrap_plot import plot_bootstrap

    report = bootstrap_report(run_dirs, reference_run, reference_cache, bench)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    plot_bootstrap([load_run(d, bench) for d in run_dirs], report, out / "bootstrap.png")
    (out / "bootstrap.md").write_text(text + "\n\n![R@5 curves](bootstrap.png)\n")
    (out / "bootstrap.json").write_text(json.dumps(_clean(report), indent=2))
    return text


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


"""The JEST paper's qualitative findings, regenerated from runs: one markdown report with a section
per finding whose runs are present (joint vs independent across filter ratios, scoring variants,
Flexi-JEST with and without two-resolution training, reference quality, selection over training).

* Runs are grouped by what they ran, read from each run's config.yaml, never by directory name: a
  group is one `Setting` (method, filter ratio, score, Flexi-JEST and its low-resolution share,
  training part, reference); runs that differ only in ``train.seed`` are repeats. Fields that do
  not change a run are left out of its setting: an IID run is (method, training part); the
  low-resolution share counts only with Flexi-JEST, the reference only for a score that uses it.
* The baseline is the IID group on the pool. Every run's target is the final value of the metric
  in the baseline run of its own seed (a lone baseline run serves every seed); iterations and
  FLOPs to the target and the speedups are those of `jest_ds.reports.speedup` (first reach on the
  piecewise-linear curve, per-seed ratios), summarised per group as the mean with the two-sided
  95% Student-t interval over seeds (`jest_ds.reports.seed_stats`); a group of one seed is
  labelled "1 seed" and has no interval.
* Selection shares (`sel/noisy_share_chosen`, `sel/target_share_chosen` and the shares among all
  candidates, ``*_all``) are each run's mean over the steps that logged them, then the mean over
  seeds; "–" where no run of the group logged them.
* Reference quality: a reference export's own training run is the export directory's parent; its
  value of the metric is taken at ``summary.json``'s ``best.step`` (the evaluation exported) when
  there is one, else at its last evaluation. Relative reference paths (as written in the configs)
  are read from the current directory.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from jest_ds.config import DataConfig, SelectionConfig
from jest_ds.models.export import CHECKSUMS
from jest_ds.reports.seed_stats import mean_interval
from jest_ds.reports.speedup import Curve, group_rows, load_curve, lower_is_better, paired_baselines, run_row
from jest_ds.selection import METHODS
from jest_ds.benchmark import HEADLINE
from jest_ds.train.metrics import read_metrics

SHARE_KEYS = ("sel/noisy_share_chosen", "sel/noisy_share_all", "sel/target_share_chosen", "sel/target_share_all")


@dataclass(frozen=True)
class Setting:
    """What a group of runs ran (None: the field does not apply to this run)."""

    method: str
    train_part: str
    filter_ratio: float | None = None
    score: str | None = None
    flexi: bool = False
    low_res_fraction: float | None = None
    reference: str | None = None
    gain: float | None = None  # the sampler's settings (the gain / n_chunks sweeps)
    n_chunks: int | None = None  # joint sampler only

    @property
    def label(self) -> str:
        """Unique per setting: every field that applies, in order."""
        parts = [("flexi-" if self.flexi else "") + self.method]
        if self.method == "iid":
            return f"iid on {self.train_part}"
        parts.append(f"f={self.filter_ratio:g}")
        parts.append(self.score)
        if self.flexi:
            parts.append(f"low-res share {self.low_res_fraction:g}")
        if self.reference is not None:
            parts.append(f"ref {self.reference}")
        if self.gain is not None:
            parts.append(f"gain {self.gain:g}")
        if self.n_chunks is not None:
            parts.append(f"{self.n_chunks} chunks")
        if self.train_part != "pool":
            parts.append(f"on {self.train_part}")
        return " ".join(parts)


def setting_of(cfg: dict) -> Setting:
    """The setting of a run from its config (a missing field takes the config's default)."""
    sel_default, data_default = SelectionConfig(), DataConfig()
    sel, data = cfg.get("selection") or {}, cfg.get("data") or {}
    get = lambda key: sel.get(key, getattr(sel_default, key))
    method, part = get("method"), data.get("train_part", data_default.train_part)
    if method == "iid":
        return Setting("iid", part)
    score, flexi = get("score"), bool(get("flexi"))
    reference = None if score == "hard_learner" else os.path.normpath(get("reference") or ".")
    return Setting(method, part, float(get("filter_ratio")), score, flexi,
                   float(get("flexi_low_res_fraction")) if flexi else None, reference, float(get("gain")),
                   int(get("n_chunks")) if method == "jest" else None)


@dataclass
class Run:
    path: Path
    setting: Setting
    seed: int
    curve: Curve
    shares: dict[str, float]  # SHARE_KEYS this run logged -> its mean over steps
    series: dict[str, tuple[list[int], list[float]]]  # SHARE_KEYS this run logged -> (steps, values)


def load_run(run_dir: str | Path, metric: str) -> Run:
    import yaml

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: no config.yaml (the run's config, written by `jest-ds train`)")
    cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    setting = setting_of(cfg)
    curve = load_curve(path, metric)
    curve.name, curve.group = str(path), setting.label  # unique run names; groups by setting
    records = read_metrics(path)
    series = {}
    for key in SHARE_KEYS:
        rows = [r for r in records if key in r]
        if rows:
            series[key] = ([r["step"] for r in rows], [float(r[key]) for r in rows])
    shares = {k: sum(v) / len(v) for k, (_, v) in series.items()}
    return Run(path, setting, int((cfg.get("train") or {}).get("seed", 0)), curve, shares, series)


@dataclass
class Group:
    setting: Setting
    runs: list[Run]
    stats: dict  # `jest_ds.reports.speedup.group_rows` row: seeds, paired, reached, mean/lo/hi/n per quantity
    shares: dict[str, dict] = field(default_factory=dict)  # SHARE_KEYS -> {"mean", "lo", "hi", "n"} over seeds

    @property
    def label(self) -> str:
        return self.setting.label


@dataclass
class Findings:
    metric: str
    lower: bool
    groups: list[Group]  # in input order of their first run
    baseline: Group
    references: dict[str, tuple[float, int] | None]  # reference path -> (its metric, step) or None

    def select(self, where: Callable[[Setting], bool] | None = None, **fields) -> list[Group]:
        """The groups (in order) whose setting has every given field value, and passes `where` if given.

        A tuple, list or set of values means any of them (no `Setting` field holds a collection):
        ``select(method=("jest", "independent"), flexi=False)``."""
        def wanted(value, want) -> bool:
            return value in want if isinstance(want, (tuple, list, set, frozenset)) else value == want

        return [g for g in self.groups if all(wanted(getattr(g.setting, k), v) for k, v in fields.items())
                and (where is None or where(g.setting))]


def group_runs(runs: list[Run]) -> dict[Setting, list[Run]]:
    """Runs by setting (input order); a setting with two runs of one seed is an error."""
    out: dict[Setting, list[Run]] = {}
    for run in runs:
        members = out.setdefault(run.setting, [])
        twin = next((m for m in members if m.seed == run.seed), None)
        if twin is not None:
            raise ValueError(f"paper findings: {twin.path} and {run.path} are the same setting "
                             f"({run.setting.label}) with the same seed {run.seed}")
        members.append(run)
    return out


def reference_quality(reference: str, metric: str) -> tuple[float, int] | None:
    """(metric, step) of the reference's own training run (the export's parent): at summary.json's
    best.step when the run kept its best evaluation, else its last evaluation; None when unknown."""
    run = Path(reference).parent
    if not (run / "metrics.jsonl").is_file():
        return None
    rows = [r for r in read_metrics(run) if metric in r]
    if not rows:
        return None
    best_step = None
    if (run / "summary.json").is_file():
        best_step = (json.loads((run / "summary.json").read_text()).get("best") or {}).get("step")
    row = next((r for r in rows if r["step"] == best_step), rows[-1])
    return float(row[metric]), int(row["step"])


def same_references_once(runs: list[Run]) -> None:
    """Runs whose reference exports are byte-identical (same SHA256SUMS, e.g. a copied export) get
    the first such path, so they group as one setting."""
    first: dict[str, str] = {}
    for run in runs:
        ref = run.setting.reference
        sums = Path(ref) / CHECKSUMS if ref is not None else None
        if sums is None or not sums.is_file():
            continue
        canonical = first.setdefault(hashlib.sha256(sums.read_bytes()).hexdigest(), ref)
        if canonical != ref:
            run.setting = replace(run.setting, reference=canonical)
            run.curve.group = run.setting.label


def analyse(run_dirs: list[str | Path], metric: str, direction: str = "auto") -> Findings:
    lower = lower_is_better(metric, direction)
    runs = [load_run(d, metric) for d in run_dirs]
    same_references_once(runs)
    by_setting = group_runs(runs)
    base_setting = Setting("iid", "pool")
    if base_setting not in by_setting:
        raise ValueError("paper findings: no IID run on the pool among the inputs (the baseline: selection.method "
                         "= iid, data.train_part = pool)")
    curves = [r.curve for r in runs]
    bases = paired_baselines(curves, base_setting.label)
    run_rows = [run_row(c, bases[c.name], lower) for c in curves if c.name in bases]
    stats = {row["group"]: row for row in group_rows(curves, run_rows)}
    groups = []
    for setting, members in by_setting.items():
        shares = {}
        for key in SHARE_KEYS:
            mean, lo, hi = mean_interval([m.shares[key] for m in members if key in m.shares])
            n = sum(key in m.shares for m in members)
            if n:
                shares[key] = {"mean": mean, "lo": lo, "hi": hi, "n": n}
        groups.append(Group(setting, members, stats[setting.label], shares))
    references = {g.setting.reference: None for g in groups if g.setting.reference is not None}
    references = {ref: reference_quality(ref, metric) for ref in references}
    return Findings(metric, lower, groups, next(g for g in groups if g.setting == base_setting), references)


# ---------------------------------------------------------------------------- markdown cells

def seeds_cell(g: Group) -> str:
    n = len(g.runs)
    text = "1 seed" if n == 1 else f"{n} seeds"
    if g.stats["unpaired"]:
        text += f" ({len(g.stats['unpaired'])} without an IID run of their seed)"
    return text


def stat_cell(stat: dict, spec: str, suffix: str = "") -> str:
    """``mean`` (one value) or ``mean [lo, hi]`` (the 95% t-interval over seeds); "–" for no value."""
    if stat["n"] == 0:
        return "–"
    text = format(stat["mean"], spec) + suffix
    if stat["n"] > 1:
        text += f" [{format(stat['lo'], spec)}, {format(stat['hi'], spec)}]"
    return text


def speedup_cell(g: Group, key: str) -> str:
    """A speedup over the seeds that reached their target, with how many did when not all."""
    s = g.stats
    if s["reached"] == 0:
        return "not reached"
    if s[key]["n"] == 0:  # reached before any training (or no FLOPs logged): no ratio
        return "n/a (at start)" if s["iters_to_target"]["n"] and not s["iters_to_target"]["mean"] else "–"
    text = stat_cell(s[key], ".2f", "×")
    if s["reached"] < s["paired"]:
        text += f" ({s['reached']}/{s['paired']} seeds reached)"
    return text


def share_cell(g: Group, key: str) -> str:
    return stat_cell(g.shares[key], ".3f") if key in g.shares else "–"


def reference_name(reference: str | None) -> str:
    """A reference export by its run's directory (``runs/demo/reference/export`` -> ``runs/demo/reference``)."""
    if reference is None:
        return "–"
    path = Path(reference)
    return str(path.parent) if path.name == "export" else str(path)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _reference_varies(groups: list[Group]) -> bool:
    return len({g.setting.reference for g in groups}) > 1


# ---------------------------------------------------------------------------- sections

def default_jest_group(fd: Findings) -> Group | None:
    """The JEST (learnability, no Flexi) group with the most seeds (the first of the largest): its gain
    and n_chunks are the setting the other sections compare at; the sweep section shows the others."""
    jest = fd.select(method="jest", flexi=False, score="learnability")
    return max(jest, key=lambda g: len(g.runs)) if jest else None


def at_default_sampler(fd: Findings) -> list[Group]:
    base = default_jest_group(fd)
    if base is None:
        return fd.select()
    gain, n_chunks = base.setting.gain, base.setting.n_chunks
    return fd.select(where=lambda s: s.method == "iid" or (s.gain == gain and s.n_chunks in (None, n_chunks)))


def sampler_sweep(fd: Findings) -> str | None:
    """JEST (learnability, no Flexi) at the default group's filter ratio and reference, by gain and n_chunks."""
    base = default_jest_group(fd)
    if base is None:
        return None
    b = base.setting
    groups = fd.select(method="jest", flexi=False, score="learnability", train_part=b.train_part,
                       filter_ratio=b.filter_ratio, reference=b.reference)
    if len(groups) < 2:
        return None
    groups.sort(key=lambda g: (g.setting.gain, g.setting.n_chunks))
    header = ["gain", "n_chunks", "seeds", f"final {fd.metric}", "iteration speedup", "FLOP speedup",
              "noisy share chosen", "on-target share chosen"]
    rows = [[f"{g.setting.gain:g}" + (" (default)" if g is base else ""), str(g.setting.n_chunks), seeds_cell(g),
             stat_cell(g.stats["final_score"], ".4f"), speedup_cell(g, "iter_speedup"), speedup_cell(g, "flop_speedup"),
             share_cell(g, "sel/noisy_share_chosen"), share_cell(g, "sel/target_share_chosen")] for g in groups]
    return (f"## Sampler settings: gain and n_chunks (JEST, f = {base.setting.filter_ratio:g})\n\n"
            "The other sections compare at the default row's gain and n_chunks.\n\n" + table(header, rows))


def joint_vs_independent(fd: Findings) -> tuple[str, list[Group]] | None:
    """Fig. 3: JEST and independent selection (learnability, no Flexi) at each filter ratio."""
    groups = fd.select(method=("jest", "independent"), flexi=False, score="learnability", train_part="pool")
    if not groups:
        return None
    groups.sort(key=lambda g: (g.setting.filter_ratio, g.setting.method, g.setting.reference or ""))
    with_ref = _reference_varies(groups)
    header = ["f", "method", *(["reference"] if with_ref else []), "seeds", f"final {fd.metric}",
              "iteration speedup to IID's final"]
    rows = [[f"{g.setting.filter_ratio:g}", g.setting.method,
             *([reference_name(g.setting.reference)] if with_ref else []), seeds_cell(g),
             stat_cell(g.stats["final_score"], ".4f"), speedup_cell(g, "iter_speedup")] for g in groups]
    text = ("## Joint vs independent selection across filter ratios (paper Fig. 3)\n\n" + table(header, rows)
            + "\n\n![speedup and final metric vs filter ratio](fig3_filter_ratio.png)")
    return text, groups


def scoring_variants(fd: Findings) -> str | None:
    """Learnability vs easy_reference vs hard_learner, JEST without Flexi, at each filter ratio one of them ran."""
    jest = dict(method="jest", flexi=False, train_part="pool")
    ratios = {g.setting.filter_ratio for g in fd.select(**jest, where=lambda s: s.score != "learnability")}
    groups = fd.select(**jest, filter_ratio=ratios)
    if not groups:
        return None
    groups.sort(key=lambda g: (g.setting.filter_ratio, METHODS.index(g.setting.score), g.setting.reference or ""))
    with_ref = _reference_varies([g for g in groups if g.setting.reference is not None])
    header = ["f", "score", *(["reference"] if with_ref else []), "seeds", f"final {fd.metric}", "iteration speedup",
              "FLOP speedup", "noisy share chosen", "noisy share offered", "on-target share chosen",
              "on-target share offered"]
    rows = [[f"{g.setting.filter_ratio:g}", g.setting.score,
             *([reference_name(g.setting.reference)] if with_ref else []), seeds_cell(g),
             stat_cell(g.stats["final_score"], ".4f"), speedup_cell(g, "iter_speedup"), speedup_cell(g, "flop_speedup"),
             *(share_cell(g, k) for k in ("sel/noisy_share_chosen", "sel/noisy_share_all",
                                          "sel/target_share_chosen", "sel/target_share_all"))] for g in groups]
    return ("## Scoring variants (JEST)\n\nShares: planted caption noise and on-target examples among the "
            "chosen examples and among all candidates offered, mean over the logged steps, then over seeds. FLOP "
            "speedup: total FLOPs, scoring included; scores from a cached reference cost no forward pass, so "
            "easy_reference with a cache costs an IID iteration plus the sampler.\n\n"
            + table(header, rows))


def flexi(fd: Findings) -> str | None:
    """Fig. 4: Flexi-JEST by its low-resolution share, next to JEST at the same filter ratio and score."""
    flexis = fd.select(method="jest", flexi=True, train_part="pool")
    if not flexis:
        return None
    kinds = {(g.setting.filter_ratio, g.setting.score) for g in flexis}
    plain = fd.select(method="jest", flexi=False, train_part="pool", where=lambda s: (s.filter_ratio, s.score) in kinds)
    groups = sorted(plain + flexis, key=lambda g: (g.setting.filter_ratio, g.setting.score, g.setting.flexi,
                                                   g.setting.low_res_fraction or 0.0, g.setting.reference or ""))
    with_ref = _reference_varies(groups)

    def variant(s: Setting) -> str:
        if not s.flexi:
            return "JEST (full-resolution scoring and training)"
        if s.low_res_fraction == 0:
            return "Flexi-JEST, low-res share 0 (coarse scoring, all trained at full resolution)"
        return f"Flexi-JEST, low-res share {s.low_res_fraction:g}"

    header = ["variant", "f", "score", *(["reference"] if with_ref else []), "seeds", f"final {fd.metric}",
              "iteration speedup", "FLOP speedup"]
    rows = [[variant(g.setting), f"{g.setting.filter_ratio:g}", g.setting.score,
             *([reference_name(g.setting.reference)] if with_ref else []), seeds_cell(g),
             stat_cell(g.stats["final_score"], ".4f"), speedup_cell(g, "iter_speedup"),
             speedup_cell(g, "flop_speedup")] for g in groups]
    return ("## Flexi-JEST with and without two-resolution training (paper Fig. 4)\n\n"
            "FLOP speedup: the IID run's total FLOPs (`flops/total`, scoring included) to its final value over "
            "this run's FLOPs to reach it, per seed.\n\n" + table(header, rows))


def reference_quality_section(fd: Findings) -> str | None:
    """JEST (learnability, no Flexi) with each reference, best reference first."""
    groups = fd.select(method="jest", flexi=False, score="learnability", train_part="pool")
    if not groups:
        return None
    sign = 1 if fd.lower else -1

    def order(g: Group):
        q = fd.references.get(g.setting.reference)
        return (q is None, sign * q[0] if q else 0.0, g.setting.filter_ratio)

    rows = []
    for g in sorted(groups, key=order):
        q = fd.references.get(g.setting.reference)
        rows.append([reference_name(g.setting.reference), "–" if q is None else f"{q[0]:.4f} (step {q[1]})",
                     f"{g.setting.filter_ratio:g}", seeds_cell(g), stat_cell(g.stats["final_score"], ".4f"),
                     speedup_cell(g, "iter_speedup"), speedup_cell(g, "flop_speedup")])
    header = ["reference run", f"reference's {fd.metric}", "f", "seeds", f"JEST final {fd.metric}",
              "iteration speedup", "FLOP speedup"]
    better = "lowest" if fd.lower else "highest"
    return (f"## Reference quality (JEST vs JEST++)\n\nSorted by the reference's own {fd.metric} ({better} first; "
            "at its exported best evaluation when its run kept one, else its last). \"–\": its training run "
            "(the export's parent directory) is not here.\n\n" + table(header, rows))


def selecting_groups(fd: Findings) -> list[Group]:
    """Groups that select and logged a chosen share (the selection-over-training plot)."""
    chosen = ("sel/noisy_share_chosen", "sel/target_share_chosen")
    return [g for g in fd.select(where=lambda s: s.method != "iid")
            if any(k in r.series for r in g.runs for k in chosen)]


def header_text(fd: Findings) -> str:
    b = fd.baseline
    reach = "≤" if fd.lower else "≥"
    return (f"# JEST findings on {fd.metric}\n\n"
            f"Baseline: IID on the pool ({seeds_cell(b)}), final {fd.metric} = "
            f"{stat_cell(b.stats['final_score'], '.4f')}. "
            f"Each run's target is the final value of the IID run of its seed; it is reached when the metric "
            f"is {reach} the target (linear between evaluations). Values are means over seeds with the two-sided "
            "95% Student-t interval in brackets; speedups average the per-seed ratios over the seeds that "
            "reached their target. Runs are grouped by their config (seeds are repeats).")


def write_findings(run_dirs: list[str | Path], out_dir: str | Path, metric: str = HEADLINE,
                   direction: str = "auto") -> str:
    """findings.md and its figures in `out_dir`; returns the markdown."""
    from jest_ds.reports.findings_plot import plot_filter_ratio, plot_selection

    fd = analyse(run_dirs, metric, direction)
    sweep = sampler_sweep(fd)
    fd = replace(fd, groups=at_default_sampler(fd))  # one sampler setting in the other sections
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [header_text(fd)]
    fig3 = joint_vs_independent(fd)
    if fig3 is not None:
        parts.append(fig3[0])
        plot_filter_ratio(fig3[1], fd.baseline, metric, out / "fig3_filter_ratio.png")
    parts += [s for s in (scoring_variants(fd), flexi(fd), reference_quality_section(fd), sweep) if s is not None]
    selecting = selecting_groups(fd)
    if selecting:
        plot_selection(selecting, out / "selection_over_training.png")
        parts.append("## Selection over training\n\nShare of planted caption noise and of on-target examples among "
                     "the chosen examples (solid) and among all candidates offered (dashed), mean over seeds.\n\n"
                     "![selection over training](selection_over_training.png)")
    text = "\n\n".join(parts) + "\n"
    (out / "findings.md").write_text(text)
    return text

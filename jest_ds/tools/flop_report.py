"""Per-iteration cost of IID, JEST and Flexi-JEST relative to IID (the paper's Figure 4, left).

For each filtering ratio f in {0.5, 0.8, 0.9} it sets the paper's cost model
(`jest_ds.flops.paper_cost_ratio`) beside our analytic ledger
(`jest_ds.flops.step_flops`), which follows OUR implementation: the chosen b
are encoded again with grad (not reused from the scoring pass), the sampler's
pair scores and the loss logits are counted, and Flexi-JEST only approximates
the image tower. Writes DIR/flop_report.md (also printed) and DIR/flop_report.png.

`--cross-check` adds the analytic per-example counts of the configured model set
against what `torch.utils.flop_counter.FlopCounterMode` counts when one image and
one caption go through its towers (the check the tests make, on your model); the
exit status is 1 when they differ.

    python tools/flop_report.py --model-preset base --out-dir runs/flops
    python tools/flop_report.py --config tiny_jest --out-dir runs/flops \
        --measured runs/*/metrics.jsonl
    python tools/flop_report.py --config my_model.yaml --out-dir runs/flops --cross-check
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from jest_ds.config import MIN_VOCAB, ExperimentConfig, ModelConfig, load_config
from jest_ds.flops import (COMPONENTS, flexi_image_ratio, flexi_learner_ratio, image_tower_flops,
                           learner_forward_flops, measure_forward_flops, model_preset, model_preset_names,
                           paper_cost_ratio, patch_resample_flops, preset_config, step_flops, text_tower_flops,
                           with_selection)

FILTER_RATIOS = (0.5, 0.8, 0.9)
THRESHOLD = 1.15  # the claim checked: Flexi-JEST at f = 0.8 (cached) costs at most this × IID

# (label, method, flexi, reference cached)
METHODS = (
    ("IID", "iid", False, True),
    ("JEST (cached ref)", "jest", False, True),
    ("JEST (ref forward)", "jest", False, False),
    ("Flexi-JEST (cached ref)", "jest", True, True),
)


def build_config(config: str | None, preset: str | None) -> tuple[ExperimentConfig, str]:
    """The config to cost and how to name it: a preset alone (its model and batch), a config, or a
    config with its model replaced by a preset's."""
    if not config:
        name = preset or "tiny"
        return preset_config(name), f"model preset {name}, the packaged config models/{name}"
    cfg = load_config(config)
    if not preset:
        return cfg, config
    return dataclasses.replace(cfg, model=model_preset(preset)), f"{config}, model preset {preset}"


def variant(cfg: ExperimentConfig, method: str, flexi: bool, cached: bool, f: float) -> ExperimentConfig:
    return with_selection(cfg, method=method, flexi=flexi, filter_ratio=f,
                          reference_mode="cached" if cached else "forward")


def rows_for(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    A, A_learner = flexi_image_ratio(cfg.model), flexi_learner_ratio(cfg.model)
    rows = []
    for f in FILTER_RATIOS:
        iid = step_flops(variant(cfg, "iid", False, True, f))["total"]
        for label, method, flexi, cached in METHODS:
            c = variant(cfg, method, flexi, cached, f)
            ours = step_flops(c)
            name = "flexi-jest" if flexi else method
            rows.append({"f": f, "method": label, "B": c.super_batch_size, "b": c.train.batch_size,
                         "paper": paper_cost_ratio(name, f, A=A, cached=cached),
                         "paper_learner_A": paper_cost_ratio(name, f, A=A_learner, cached=cached),
                         "ours": ours["total"] / iid,
                         **{k: ours[k] / iid for k in COMPONENTS}, "flops_per_step": ours["total"]})
    return rows


def markdown(cfg: ExperimentConfig, where: str, rows: list[dict[str, Any]]) -> str:
    m = cfg.model
    A, A_l = flexi_image_ratio(m), flexi_learner_ratio(m)
    lines = [
        "# Per-iteration cost relative to IID",
        "",
        f"Config: {where}. Image {m.image_size}px, patch {m.patch_size} (coarse {m.coarse_patch_size}), "
        f"ViT width {m.vision_width} depth {m.vision_depth}; text width {m.text_width} depth {m.text_depth}, "
        f"{m.context_length} tokens; embed {m.embed_dim}. Score: {cfg.selection.score}, "
        f"{cfg.selection.n_chunks} chunks, Flexi low-res fraction {cfg.selection.flexi_low_res_fraction}.",
        f"F (learner forward / pair) = {learner_forward_flops(m) / 1e9:.4g} GFLOP; "
        f"A (image tower coarse/fine) = {A:.3f}; learner-level coarse/fine = {A_l:.3f}.",
        "",
        "*paper*: the paper's formulas (scoring pass reused for training) with A = the image-tower ratio; "
        "*paper, learner A*: the same with A = the learner-level ratio (Flexi-JEST leaves the text tower at full "
        "cost). *ours*: our analytic ledger (the b chosen are encoded AGAIN with grad; pair scores and loss "
        "logits counted). Component columns: our step's parts as a share of IID's step.",
        "",
        "| f | method | B | b | paper | paper, learner A | ours | scoring | reference | selection | training |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['f']:.1f} | {r['method']} | {r['B']} | {r['b']} | {r['paper']:.3f}× | "
                     f"{r['paper_learner_A']:.3f}× | {r['ours']:.3f}× | "
                     f"{r['scoring']:.3f} | {r['reference']:.3f} | {r['selection']:.4f} | {r['training']:.3f} |")
    if not where.startswith("model preset"):
        own = step_flops(cfg)
        sel = cfg.selection
        name = sel.method + (" + flexi" if sel.flexi else "") + ("" if sel.method == "iid" else
                                                                 f", f = {sel.filter_ratio}, ref {sel.reference_mode}")
        lines += ["", f"This config as configured ({name}): {own['total']:.4g} FLOPs/step = "
                  f"{own['total'] / step_flops(with_selection(cfg, method='iid', flexi=False))['total']:.3f}× IID "
                  f"(" + ", ".join(f"{k} {own[k]:.3g}" for k in COMPONENTS) + ")."]
    flexi = next(r for r in rows if r["f"] == 0.8 and r["method"].startswith("Flexi"))
    ok = lambda v: "yes" if v <= THRESHOLD else "NO"  # noqa: E731
    lines += [
        "",
        f"Flexi-JEST ≤ {THRESHOLD}× IID at f = 0.8 (cached reference)? "
        f"paper formula: {flexi['paper']:.3f}× → {ok(flexi['paper'])}; "
        f"ours: {flexi['ours']:.3f}× → {ok(flexi['ours'])}.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m[0] for m in METHODS]
    colors = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c"]
    width = 0.8 / (2 * len(labels))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for gi, f in enumerate(FILTER_RATIOS):
        for mi, label in enumerate(labels):
            r = next(r for r in rows if r["f"] == f and r["method"] == label)
            x0 = gi + (2 * mi - len(labels)) * width
            ax.bar(x0, r["paper"], width, color=colors[mi], label=f"{label}, paper" if gi == 0 else None)
            ax.bar(x0 + width, r["ours"], width, color=colors[mi], alpha=0.45, hatch="//",
                   label=f"{label}, ours" if gi == 0 else None)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(THRESHOLD, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(FILTER_RATIOS)), [f"f = {f}" for f in FILTER_RATIOS])
    ax.set_ylabel("FLOPs per iteration / IID")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- measured runs

STEP_KEYS = ("step", "steps", "flops/steps", "train/step", "global_step")


def last_record(path: Path) -> dict[str, Any] | None:
    last = None
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "flops/total" in rec:
                last = rec
    return last


def run_method(run_dir: Path) -> str | None:
    """The run's selection method from its saved config.yaml, if there is one."""
    import yaml

    for name in ("config.yaml", "config.yml"):
        p = run_dir / name
        if p.is_file():
            try:
                values = yaml.safe_load(p.read_text()) or {}
                sel = values.get("selection", {}) or {}
                return sel.get("method", "iid") + ("+flexi" if sel.get("flexi") else "")
            except Exception:  # noqa: BLE001 - a report tool: never die on one bad run
                return None
    return None


def measured_section(paths: list[str], iid_analytic: float) -> str:
    runs = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            print(f"warning: {p}: no metrics.jsonl", file=sys.stderr)
            continue
        rec = last_record(path)
        steps = next((rec[k] for k in STEP_KEYS if rec and isinstance(rec.get(k), (int, float)) and rec[k] > 0), None)
        if rec is None or not steps:
            print(f"warning: {p}: no line with flops/total and a step count", file=sys.stderr)
            continue
        per = {k: float(rec.get(f"flops/{k}", 0.0)) / steps for k in (*COMPONENTS, "total")}
        runs.append({"run": path.parent.name, "method": run_method(path.parent) or "?", "steps": int(steps), **per})
    if not runs:
        return "\n## Measured runs\n\nNone readable.\n"
    iid_runs = [r for r in runs if r["method"] == "iid"]
    base = sum(r["total"] for r in iid_runs) / len(iid_runs) if iid_runs else iid_analytic
    basis = "the mean of the IID runs given" if iid_runs else "the analytic IID step of this report's config"
    lines = ["", "## Measured runs (cumulative flops/* of the last metrics line ÷ steps)", "",
             f"Ratios relative to {basis} ({base:.4g} FLOPs/step).", "",
             "| run | method | steps | FLOPs/step | vs IID | scoring | reference | selection | training |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['method']} | {r['steps']} | {r['total']:.4g} | {r['total'] / base:.3f}× | "
                     + " | ".join(f"{r[k] / base:.3f}" for k in ("scoring", "reference", "selection", "training"))
                     + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- cross-check

def cross_check(m: ModelConfig) -> tuple[str, bool]:
    """The analytic counts of one image (at the base and the coarse patch) and one caption against
    FlopCounterMode on the model's own towers: (markdown section, whether all agree exactly).

    The image tower is built on the meta device (shapes only: any size, no arithmetic); the text
    tower reads its token ids, so it runs on the CPU with real weights."""
    import torch

    from jest_ds.models import ImageTower, TextTower

    m = dataclasses.replace(m, vocab_size=m.vocab_size or 1000)  # 0 (the tokenizer's): the look-up has no matmul
    with torch.device("meta"):
        image = ImageTower(m).eval()
        x = torch.empty(1, 3, m.image_size, m.image_size)
    text = TextTower(m).eval()
    tokens = torch.full((1, m.context_length), MIN_VOCAB, dtype=torch.long)
    rows = []
    for p in dict.fromkeys((m.patch_size, m.coarse_patch_size)):
        what = f"image tower, patch {p} (1 image" + (", kernel resampling once per call)" if p != m.patch_size
                                                     else ")")
        rows.append((what, image_tower_flops(m, p) + patch_resample_flops(m, p),
                     measure_forward_flops(lambda: image(x, p))))
    rows.append((f"text tower (1 caption, {m.context_length} tokens)", text_tower_flops(m),
                 measure_forward_flops(lambda: text(tokens))))
    agree = all(a == b for _, a, b in rows)
    lines = ["", "## Cross-check: analytic counts against FlopCounterMode (this model)", "",
             "One image and one caption through the towers of the model above under `torch.utils.flop_counter."
             "FlopCounterMode`, against `jest_ds.flops`. Every term of the step is a multiple of these (scoring "
             "B·F, training 3·b·F with the backward counted as 2 × forward: docs/flops.md gives the exact "
             "difference a real backward makes).", "",
             "| pass | analytic | FlopCounterMode | difference |", "|---|---|---|---|"]
    for what, analytic, measured in rows:
        lines.append(f"| {what} | {analytic:,} | {measured:,} | {measured - analytic:+,} "
                     f"({100 * (measured - analytic) / analytic:+.3f}%) |")
    lines += ["", "Analytic = measured: " + ("yes, exactly." if agree else
                                             "**NO**: the ledger does not describe this model's towers.")]
    return "\n".join(lines) + "\n", agree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="experiment YAML (b, n_chunks, score, model); optional")
    ap.add_argument("--model-preset", choices=model_preset_names(),
                    help="model to cost (default: the config's, else tiny); presets are packaged configs models/NAME")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--measured", nargs="*", default=[], help="runs/*/metrics.jsonl (or run dirs)")
    ap.add_argument("--cross-check", action="store_true",
                    help="also count one image and one caption through the model with FlopCounterMode and set "
                         "them against the analytic counts (exit status 1 when they differ)")
    args = ap.parse_args(argv)

    cfg, where = build_config(args.config, args.model_preset)
    rows = rows_for(cfg)
    text = markdown(cfg, where, rows)
    if args.measured:
        text += measured_section(args.measured, step_flops(with_selection(cfg, method="iid", flexi=False))["total"])
    agree = True
    if args.cross_check:
        section, agree = cross_check(cfg.model)
        text += section
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flop_report.md").write_text(text)
    plot(rows, out / "flop_report.png", f"Cost per iteration relative to IID ({where})")
    print(text)
    print(f"wrote {out / 'flop_report.md'} and {out / 'flop_report.png'}")
    if not agree:
        print("flop_report: the analytic counts differ from FlopCounterMode on this model (see the cross-check)",
              file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())

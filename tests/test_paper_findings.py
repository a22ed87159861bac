"""tools/paper_findings.py and jest_ds.reports.findings on hand-written runs whose groups and numbers
are known by construction; the real-score Figure 2 mode of tools/selection_diagnostics.py on two
tiny exported models and the synthetic dataset."""
import importlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from jest_ds.reports.findings import Setting, analyse, reference_quality, setting_of, write_findings

METRIC = "eval/icon_retrieval/val_loss_batch"  # lower is better
T975_DF1 = 12.7062  # Student-t 0.975 quantile, 1 degree of freedom (tables)


def _tool(name):
    return importlib.import_module(f"jest_ds.tools.{name}")


def _run(root, name, seed, points, flops_per_step=1.0, shares=None, metric=METRIC, **selection):
    """A fake run: config.yaml with `selection` (method iid when empty) and data.train_part, metrics.jsonl
    with `metric` at each (step, value) and flops/total = step * flops_per_step; `shares`: key -> values
    logged at steps 10, 20, ..."""
    d = root / name
    d.mkdir(parents=True)
    train_part = selection.pop("train_part", "pool")
    sel = {"method": "iid", **selection}
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "selection": sel, "data": {"train_part": train_part},
                                                   "train": {"batch_size": 10, "seed": seed}}))
    rows = [{"step": s, metric: v, "flops/total": s * flops_per_step} for s, v in points]
    for key, values in (shares or {}).items():
        rows += [{"step": 10 * (k + 1), key: v} for k, v in enumerate(values)]
    rows.sort(key=lambda r: r["step"])
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _jest(**over):
    return {"method": "jest", "filter_ratio": 0.8, "score": "learnability", "flexi": False,
            "flexi_low_res_fraction": 0.5, "reference": "refs/a/export", **over}


def _row(text, first_cells):
    """The markdown table row that starts with these cells."""
    start = "| " + " | ".join(first_cells) + " |"
    rows = [line for line in text.splitlines() if line.startswith(start)]
    assert len(rows) == 1, (start, text)
    return [c.strip() for c in rows[0].strip("|").split("|")]


# ---------------------------------------------------------------------------- grouping

def test_runs_are_grouped_by_config_not_name(tmp_path):
    runs = [_run(tmp_path, "a", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "b", 1, [(0, 2.0), (400, 1.2)], filter_ratio=0.5),  # filter ratio means nothing for IID
            _run(tmp_path, "x_s0", 0, [(0, 2.0), (100, 1.0)], **_jest()),
            _run(tmp_path, "y", 1, [(0, 2.0), (100, 1.2)], **_jest()),
            _run(tmp_path, "x_s1", 1, [(0, 2.0), (100, 1.0)], **_jest(score="easy_reference")),
            _run(tmp_path, "z", 2, [(0, 2.0), (100, 1.0)], **_jest(flexi_low_res_fraction=0.0)),  # no flexi: same
            _run(tmp_path, "w", 0, [(0, 2.0), (100, 1.0)], **_jest(score="hard_learner", reference="refs/b/export"))]
    fd = analyse(runs, METRIC)
    by = {g.label: sorted(r.path.name for r in g.runs) for g in fd.groups}
    assert by == {"iid on pool": ["a", "b"],
                  "jest f=0.8 learnability ref refs/a/export gain 100 16 chunks": ["x_s0", "y", "z"],
                  "jest f=0.8 easy_reference ref refs/a/export gain 100 16 chunks": ["x_s1"],
                  "jest f=0.8 hard_learner gain 100 16 chunks": ["w"]}  # hard_learner uses no reference
    assert fd.baseline.label == "iid on pool" and [r.seed for r in fd.baseline.runs] == [0, 1]


def test_setting_fields():
    assert setting_of({"selection": {"method": "iid", "score": "hard_learner"}}) == Setting("iid", "pool")
    assert setting_of({"data": {"train_part": "curated"}}) == Setting("iid", "curated")  # default method: iid
    flexi = setting_of({"selection": {"method": "jest", "flexi": True, "flexi_low_res_fraction": 0,
                                      "reference": "r/export/"}})
    assert flexi == Setting("jest", "pool", 0.8, "learnability", True, 0.0, "r/export", 100.0, 16)  # config defaults
    independent = setting_of({"selection": {"method": "independent", "reference": "r", "n_chunks": 4}})
    assert independent.n_chunks is None and independent.gain == 100.0  # n_chunks is the joint sampler's
    assert flexi != setting_of({"selection": {"method": "jest", "flexi": True, "reference": "r/export"}})


def test_same_setting_and_seed_twice_and_no_baseline_are_errors(tmp_path):
    iid = _run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)])
    a = _run(tmp_path, "a", 0, [(0, 2.0), (100, 1.0)], **_jest())
    b = _run(tmp_path, "b", 0, [(0, 2.0), (100, 1.0)], **_jest())
    with pytest.raises(ValueError, match=f"{re.escape(str(a))} and {re.escape(str(b))} are the same setting .* seed 0"):
        analyse([iid, a, b], METRIC)
    with pytest.raises(ValueError, match="no IID run on the pool"):
        analyse([a, _run(tmp_path, "cur", 0, [(0, 2.0), (400, 1.0)], train_part="curated")], METRIC)
    assert _tool("paper_findings").main([str(a), "--out", str(tmp_path / "r")]) == 2


# ---------------------------------------------------------------------------- sections and numbers

def test_joint_vs_independent_table_and_plot(tmp_path):
    # IID seed 0 ends at 1.0, seed 1 at 1.2 (step 400); JEST seed 0 reaches 1.0 at step 100 (4x),
    # seed 1 reaches 1.2 at step 200 (2x); independent (one seed) reaches 1.0 at step 200 (2x).
    runs = [_run(tmp_path, "iid_s0", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "iid_s1", 1, [(0, 2.0), (400, 1.2)]),
            _run(tmp_path, "jest_s0", 0, [(0, 2.0), (100, 1.0), (400, 0.7)], **_jest()),
            _run(tmp_path, "jest_s1", 1, [(0, 2.0), (200, 1.2), (400, 0.9)], **_jest()),
            _run(tmp_path, "indep", 0, [(0, 2.0), (200, 1.0), (400, 0.9)], **_jest(method="independent")),
            _run(tmp_path, "jest_f5", 0, [(0, 2.0), (400, 1.5)], **_jest(filter_ratio=0.5))]  # never reaches 1.0
    text = write_findings(runs, tmp_path / "out", METRIC)
    assert (tmp_path / "out" / "findings.md").read_text() == text
    fd = analyse(runs, METRIC)
    jest = fd.select(method="jest", filter_ratio=0.8)[0].stats
    mean, half = 3.0, T975_DF1 * math.sqrt(2.0) / math.sqrt(2)  # speedups 4 and 2: sd sqrt(2)
    assert jest["iter_speedup"]["mean"] == pytest.approx(mean)
    assert jest["iter_speedup"]["hi"] == pytest.approx(mean + half, rel=1e-4)
    assert jest["final_score"]["mean"] == pytest.approx(0.8)
    final_half = T975_DF1 * 0.1  # finals 0.7 and 0.9: sd 0.1 * sqrt(2), over sqrt(2)
    assert _row(text, ["0.8", "jest"]) == ["0.8", "jest", "2 seeds",
                                           f"0.8000 [{0.8 - final_half:.4f}, {0.8 + final_half:.4f}]",
                                           f"3.00× [{mean - half:.2f}, {mean + half:.2f}]"]
    assert _row(text, ["0.8", "independent"]) == ["0.8", "independent", "1 seed", "0.9000", "2.00×"]
    assert _row(text, ["0.5", "jest"])[-1] == "not reached"
    assert "Baseline: IID on the pool (2 seeds)" in text
    assert (tmp_path / "out" / "fig3_filter_ratio.png").stat().st_size > 1000
    for absent in ("Scoring variants", "Flexi-JEST", "Selection over training"):
        assert absent not in text  # their runs are not here


def test_scoring_variants_with_selection_shares(tmp_path):
    runs = [_run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "learn", 0, [(0, 2.0), (100, 1.0)], flops_per_step=2.0, **_jest(),
                 shares={"sel/noisy_share_chosen": [0.1, 0.3], "sel/noisy_share_all": [0.25, 0.25],
                         "sel/target_share_chosen": [0.5, 0.7], "sel/target_share_all": [0.2, 0.2]}),
            _run(tmp_path, "easy", 0, [(0, 2.0), (400, 1.0)], **_jest(score="easy_reference"),
                 shares={"sel/noisy_share_chosen": [0.0, 0.1], "sel/noisy_share_all": [0.25, 0.25]}),  # an old run
            _run(tmp_path, "hard", 0, [(0, 2.0), (800, 1.1)], **_jest(score="hard_learner"),
                 shares={"sel/noisy_share_chosen": [0.6, 0.6], "sel/noisy_share_all": [0.25, 0.25]})]
    text = write_findings(runs, tmp_path / "out", METRIC)
    # f | score | seeds | final | iteration speedup | FLOP speedup | noisy chosen | noisy offered | on-target
    # chosen | offered; learnability costs 2 IID iterations per iteration here: 4x fewer iterations, 2x fewer FLOPs
    assert _row(text, ["0.8", "learnability"]) == ["0.8", "learnability", "1 seed", "1.0000", "4.00×", "2.00×",
                                                   "0.200", "0.250", "0.600", "0.200"]
    assert _row(text, ["0.8", "easy_reference"])[4:] == ["1.00×", "1.00×", "0.050", "0.250", "–", "–"]
    assert _row(text, ["0.8", "hard_learner"])[4:] == ["not reached", "not reached", "0.600", "0.250", "–", "–"]
    assert "![selection over training](selection_over_training.png)" in text
    assert (tmp_path / "out" / "selection_over_training.png").stat().st_size > 1000


def test_flexi_iteration_and_flop_speedups(tmp_path):
    # IID: 1 FLOP per step, reaches its final 1.0 at step 400 = 400 FLOPs.
    runs = [_run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)], flops_per_step=1.0),
            _run(tmp_path, "jest", 0, [(0, 2.0), (100, 1.0), (400, 0.8)], flops_per_step=8.0, **_jest()),
            _run(tmp_path, "flexi5", 0, [(0, 2.0), (100, 1.0), (400, 0.8)], flops_per_step=2.0,
                 **_jest(flexi=True)),
            _run(tmp_path, "flexi0", 0, [(0, 2.0), (200, 1.0), (400, 0.9)], flops_per_step=4.0,
                 **_jest(flexi=True, flexi_low_res_fraction=0.0))]
    text = write_findings(runs, tmp_path / "out", METRIC)
    # variant | f | score | seeds | final | iteration speedup | FLOP speedup
    assert _row(text, ["JEST (full-resolution scoring and training)"])[-2:] == ["4.00×", "0.50×"]  # 400 / 800
    assert _row(text, ["Flexi-JEST, low-res share 0.5"])[-2:] == ["4.00×", "2.00×"]  # 400 / 200
    assert _row(text, ["Flexi-JEST, low-res share 0 (coarse scoring, all trained at full resolution)"])[-2:] == [
        "2.00×", "0.50×"]  # 400 / 800


def _reference_run(root, name, points, best_step=None):
    run = root / name
    (run / "export").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, METRIC: v}) + "\n" for s, v in points))
    if best_step is not None:
        (run / "summary.json").write_text(json.dumps({"step": points[-1][0], "best": {"step": best_step}}))
    return run / "export"


def test_reference_quality_sorted_by_the_reference_metric(tmp_path):
    ref_a = _reference_run(tmp_path, "ref_a", [(50, 1.5), (100, 1.7)], best_step=50)  # exported at step 50
    ref_b = _reference_run(tmp_path, "ref_b", [(50, 1.4), (100, 1.2)])  # no best: its last evaluation
    assert reference_quality(str(ref_a), METRIC) == (1.5, 50) and reference_quality(str(ref_b), METRIC) == (1.2, 100)
    runs = [_run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "with_a", 0, [(0, 2.0), (200, 1.0)], **_jest(reference=str(ref_a))),
            _run(tmp_path, "with_b", 0, [(0, 2.0), (100, 1.0)], **_jest(reference=str(ref_b))),
            _run(tmp_path, "with_gone", 0, [(0, 2.0), (400, 1.0)], **_jest(reference=str(tmp_path / "gone/export")))]
    text = write_findings(runs, tmp_path / "out", METRIC)
    section = text[text.index("## Reference quality"):]
    rows = [line for line in section.splitlines() if line.startswith(f"| {tmp_path}")]
    order = [r.split(" | ")[0].removeprefix("| ") for r in rows]
    assert order == [str(tmp_path / n) for n in ("ref_b", "ref_a", "gone")]
    assert _row(section, [str(tmp_path / "ref_b"), "1.2000 (step 100)"])[-2] == "4.00×"
    assert _row(section, [str(tmp_path / "ref_a"), "1.5000 (step 50)"])[-2] == "2.00×"
    assert _row(section, [str(tmp_path / "gone"), "–"])[-2] == "1.00×"
    # a score: higher is better, so the order flips
    runs_r5 = [_run(tmp_path / "r5", n, 0, [(0, 0.0), (400, 0.5)], metric="eval/icon_retrieval/headline", **kw)
               for n, kw in (("iid", {}), ("with_a", _jest(reference=str(ref_a))),
                             ("with_b", _jest(reference=str(ref_b))))]
    for ref, value in ((ref_a, 0.3), (ref_b, 0.1)):
        record = {"step": 50, "eval/icon_retrieval/headline": value}
        (ref.parent / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    text = write_findings(runs_r5, tmp_path / "r5" / "out", "eval/icon_retrieval/headline")
    assert text.index(f"| {ref_a.parent} |") < text.index(f"| {ref_b.parent} |")


# ---------------------------------------------------------------------------- Figure 2 on real scores

@pytest.fixture(scope="module")
def two_exports(synthetic_root, tmp_path_factory):
    """Two randomly initialised tiny models exported (learner, reference): no training needed."""
    from synthetic_data import TINY_MODEL
    from jest_ds.config import config_from_dict
    from jest_ds.models import DualEncoder
    from jest_ds.models.export import export_model

    out = tmp_path_factory.mktemp("fig2_exports")
    cfg = config_from_dict({"model": {**TINY_MODEL, "vocab_size": 64}, "data": {"root": str(synthetic_root)},
                            "selection": {"gain": 10.0}})
    dirs = []
    for seed, name in ((0, "learner"), (1, "reference")):
        torch.manual_seed(seed)
        export_model(DualEncoder(cfg.model).state_dict(), cfg, out / name)
        dirs.append(out / name)
    return dirs


def test_real_learnability_matrix_is_the_trainers(two_exports, synthetic_root):
    from jest_ds.models.export import load_exported
    from jest_ds.reports.real_scores import ScoreSettings, model_embeddings, real_score_matrices
    from jest_ds.train.selection_record import self_pair_learnability

    learner_dir, reference_dir = two_exports
    matrices, batches, used = real_score_matrices(learner_dir, reference_dir, synthetic_root, "pool", B=96, count=2)
    assert (used.method, used.gain, used.loss) == ("learnability", 10.0, "sigmoid")  # from the learner's config
    assert len(matrices) == 2 and all(S.shape == (96, 96) and S.dtype == torch.float64 for S in matrices)
    assert batches[0].keys != batches[1].keys and all(k.startswith("pool-") for k in batches[0].keys)
    (S,), (batch,), _ = real_score_matrices(learner_dir, reference_dir, synthetic_root, "pool", B=96, count=1,
                                            settings=ScoreSettings(gain=1.0))
    learner, reference = (model_embeddings(load_exported(d)[0], batch) for d in two_exports)
    # the diagonal: the trainer's self-pair learnability
    assert S.diagonal().numpy() == pytest.approx(self_pair_learnability(learner, reference), rel=1e-5, abs=1e-5)

    def dense_nll(e):  # -log sigmoid(y_ij (t <img_i, txt_j> + b)), y = +1 on the diagonal, -1 off it
        logits = e.log_scale.double().exp() * e.img.double() @ e.txt.double().T + e.bias.double()
        y = 2 * torch.eye(logits.shape[0], dtype=torch.float64) - 1
        return -F.logsigmoid(y * logits)

    assert torch.allclose(S, dense_nll(learner) - dense_nll(reference), atol=1e-5)
    assert S.abs().max() > 0.05  # the two models disagree: not a trivially zero matrix


def test_real_scores_sampler_comparison(two_exports, synthetic_root, tmp_path, capsys):
    tool = _tool("selection_diagnostics")
    learner_dir, reference_dir = two_exports
    out = tmp_path / "fig2.json"
    assert tool.main(["--learner", str(learner_dir), "--reference", str(reference_dir), "--data-root",
                      str(synthetic_root), "--B", "64", "--b", "16", "--chunks", "1", "4", "16", "--draws", "30",
                      "--gibbs-sweeps", "100", "--out", str(out), "--png", str(tmp_path / "fig2.png")]) == 0
    res = json.loads(out.read_text())
    assert set(res["chunks"]) == {"1", "4", "16"}
    assert res["gibbs"] >= res["chunks"]["1"] > res["uniform"]
    assert "real scores" in capsys.readouterr().out and (tmp_path / "fig2.png").stat().st_size > 1000
    assert tool.main(["--learner", str(learner_dir), "--reference", str(reference_dir), "--data-root",
                      str(synthetic_root), "--part", "nope"]) == 2


def test_synthetic_mode_still_works(tmp_path):
    out = tmp_path / "syn.json"
    assert _tool("selection_diagnostics").main(["--B", "32", "--b", "8", "--chunks", "1", "8", "--draws", "20",
                                                "--gibbs-sweeps", "50", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gibbs"] > res["chunks"]["8"] > res["chunks"]["1"] > res["uniform"]


def test_copies_of_one_reference_export_group_together(tmp_path):
    ref_a = _reference_run(tmp_path, "ref_a", [(50, 1.5)])
    ref_copy = _reference_run(tmp_path, "ref_copy", [(50, 1.5)])
    ref_other = _reference_run(tmp_path, "ref_other", [(50, 1.5)])
    for ref, sums in ((ref_a, "abc  model.safetensors\n"), (ref_copy, "abc  model.safetensors\n"),
                      (ref_other, "def  model.safetensors\n")):
        (ref / "SHA256SUMS").write_text(sums)
    runs = [_run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "j0", 0, [(0, 2.0), (100, 1.0)], **_jest(reference=str(ref_a))),
            _run(tmp_path, "j1", 1, [(0, 2.0), (100, 1.0)], **_jest(reference=str(ref_copy))),
            _run(tmp_path, "j2", 2, [(0, 2.0), (100, 1.0)], **_jest(reference=str(ref_other)))]
    fd = analyse(runs, METRIC)
    groups = {g.setting.reference: sorted(Path(m.path).name for m in g.runs) for g in fd.groups}
    assert groups == {None: ["iid"], str(ref_a): ["j0", "j1"], str(ref_other): ["j2"]}


def test_gain_and_chunk_sweeps_get_their_own_section(tmp_path):
    runs = [_run(tmp_path, "iid", 0, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "iid_s1", 1, [(0, 2.0), (400, 1.0)]),
            _run(tmp_path, "jest", 0, [(0, 2.0), (100, 1.0)], **_jest(gain=10.0, n_chunks=16)),
            _run(tmp_path, "jest_s1", 1, [(0, 2.0), (200, 1.0)], **_jest(gain=10.0, n_chunks=16)),
            _run(tmp_path, "jest_g100", 0, [(0, 2.0), (50, 1.0)], **_jest(gain=100.0, n_chunks=16)),
            _run(tmp_path, "jest_c4", 0, [(0, 2.0), (400, 1.0)], **_jest(gain=10.0, n_chunks=4)),
            _run(tmp_path, "independent", 0, [(0, 2.0), (400, 1.5)],
                 **_jest(method="independent", gain=10.0, n_chunks=64))]  # n_chunks unused by independent
    text = write_findings(runs, tmp_path / "out", METRIC)
    sweep = text.split("## Sampler settings")[1]
    assert _row(sweep, ["10 (default)", "16"])[2:5] == ["2 seeds", "1.0000 [1.0000, 1.0000]", "3.00× [-9.71, 15.71]"]
    assert _row(sweep, ["100", "16"])[4] == "8.00×" and _row(sweep, ["10", "4"])[4] == "1.00×"
    fig3 = text.split("## Joint vs independent")[1].split("##")[0]
    assert "2 seeds" in fig3 and "8.00×" not in fig3  # the other sections stay at the default sampler
    assert _row(fig3, ["0.8", "independent"])[3] == "1.5000"

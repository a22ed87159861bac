"""The benchmark's headline report (jest_ds/reports/bootstrap.py) on hand-made run directories whose
every figure can be worked out by hand."""
import json

import pytest
import yaml

from jest_ds import benchmark
from jest_ds.benchmark import EMBEDDED, HEADLINE, SELECTION, ZEROSHOT_TOP1, Benchmark
from jest_ds.reports.bootstrap import bootstrap_report, markdown, write_report

R1 = EMBEDDED.r1


def _run(root, name, cfg, evals, flops_per_step, seed=0):
    """evals: [(step, test R@5, validation R@5)]."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {"name": name, "model": {"embed_dim": 8}, **cfg}
    cfg.setdefault("train", {}).update({"batch_size": 10, "seed": seed})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": s, HEADLINE: r5, SELECTION: val, R1[0]: r5 / 2, R1[1]: r5 / 4, ZEROSHOT_TOP1: 0.1 + r5,
             "eval/fashion_mnist/top1": 0.5 - r5, "eval/fashion_mnist/chance_top1": 0.1,
             "flops/total": s * flops_per_step} for s, r5, val in evals]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _reference(root):
    ref = _run(root, "reference", {"data": {"train_part": "curated"}, "selection": {"method": "iid"},
                                    "model": {"image_size": 32, "patch_size": 4, "vision_width": 96, "vision_depth": 2,
                                              "vision_heads": 3, "text_width": 96, "text_depth": 2, "text_heads": 3,
                                              "context_length": 16, "embed_dim": 64}},
               [(0, 0.0, 0.0), (100, 0.30, 0.5), (200, 0.25, 0.4)], 2.0)
    (ref / "summary.json").write_text(json.dumps({"step": 100}))  # exported at its best validation R@5
    (ref / "export").mkdir()
    cache = root / "cache"
    cache.mkdir()
    (cache / "reference_cache.json").write_text(json.dumps({"rows": 1000}))
    return ref, cache


def test_speedups_passing_the_reference_best_evaluation_and_cost(tmp_path):
    ref, cache = _reference(tmp_path)
    jest_sel = {"selection": {"method": "jest", "filter_ratio": 0.8, "reference": str(ref / "export")}}
    iid = _run(tmp_path, "iid", {"selection": {"method": "iid"}}, [(0, 0.0, 0.0), (100, 0.1, 0.1), (200, 0.2, 0.2)], 3.0)
    jest = _run(tmp_path, "jest", jest_sel, [(0, 0.0, 0.0), (100, 0.4, 0.4), (200, 0.6, 0.6)], 6.0)
    cur = _run(tmp_path, "curated", {"data": {"train_part": "curated"}, "selection": {"method": "iid"}},
               [(0, 0.0, 0.0), (100, 0.25, 0.9), (200, 0.15, 0.3)], 3.0)
    rep = bootstrap_report([iid, jest, cur], reference_cache=cache)  # the reference found via jest's config
    by = {r["run"]: r for r in rep["runs"]}
    # JEST reaches IID's final 0.2 at step 50 (linear between 0 and 0.4): 200 / 50 = 4x iterations;
    # IID spends 600 FLOPs to get there, JEST 50 * 6 = 300: 2x
    assert by["jest"]["iters_to_iid"] == pytest.approx(50.0)
    assert by["jest"]["iter_speedup"] == pytest.approx(4.0)
    assert by["jest"]["flop_speedup"] == pytest.approx(2.0)
    # the reference's R@5 at its exported step (100) is 0.30, not its last (0.25)
    assert rep["reference"]["r5"] == pytest.approx(0.30)
    assert by["jest"]["iters_to_ref"] == pytest.approx(75.0)
    assert by["jest"]["final_over_ref"] == pytest.approx(2.0)
    assert by["iid"]["iters_to_ref"] is None  # IID never passes it
    # the curated baseline: best on validation at step 100 (test R@5 0.25), final 0.15
    assert by["curated"]["best_step"] == 100 and by["curated"]["best_r5"] == pytest.approx(0.25)
    assert by["curated"]["final_r5"] == pytest.approx(0.15)
    assert by["jest"]["final_r1"] == pytest.approx(0.6 * 3 / 8)  # mean of the two directions
    # one-off cost: all of the reference's training (200 steps x 2), not only up to the exported step,
    # plus one reference forward per cached row
    from jest_ds.config import ModelConfig
    from jest_ds.flops import learner_forward_flops

    cache_flops = 1000 * learner_forward_flops(ModelConfig(**yaml.safe_load((ref / "config.yaml").read_text())["model"]))
    assert rep["reference"]["train_flops"] == pytest.approx(400.0)
    assert rep["reference_one_off_flops"] == pytest.approx(400.0 + cache_flops)
    jest_group = next(g for g in rep["groups"] if g["group"] == "jest")
    assert jest_group["payback_runs"] == pytest.approx((400.0 + cache_flops) / (600.0 - 300.0))
    # the strongest baseline without selection: the reference (0.30) beats curated's best (0.25) and IID's (0.2)
    assert rep["strongest"] == {"r5": pytest.approx(0.30), "name": "the reference"}
    assert by["jest"]["iters_to_strongest"] == pytest.approx(75.0) and by["curated"]["iters_to_strongest"] is None
    assert next(g for g in rep["groups"] if g["group"] == "curated")["payback_runs"] is None  # uses no reference
    text = markdown(rep)
    assert "one seed" in text and "reference (reference, curated set, exported at step 100)" in text
    assert "Fashion-MNIST top-1" in text
    assert "| jest | — | — | — | -0.100 |" in text  # final 0.5 - 0.6; the sets it never logged are blank
    assert "| chance | — | — | — | 0.100 |" in text  # the logged chance level


def test_seeds_pair_with_their_own_iid_and_give_intervals(tmp_path):
    ref, cache = _reference(tmp_path)
    sel = {"selection": {"method": "jest", "filter_ratio": 0.8, "reference": str(ref / "export")}}
    runs = []
    for seed, (iid_final, jest_mid) in enumerate([(0.2, 0.4), (0.1, 0.4), (0.2, 0.8)]):
        runs.append(_run(tmp_path, f"iid_s{seed}", {"selection": {"method": "iid"}},
                         [(0, 0.0, 0.0), (100, iid_final / 2, 0.1), (200, iid_final, 0.2)], 3.0, seed))
        runs.append(_run(tmp_path, f"jest_s{seed}", sel, [(0, 0.0, 0.0), (100, jest_mid, 0.4), (200, 0.6, 0.6)], 6.0,
                         seed))
    out = tmp_path / "report"
    text = write_report(runs, out)
    rep = json.loads((out / "bootstrap.json").read_text())
    jest = next(g for g in rep["groups"] if g["group"] == "jest")
    # per seed: 200 / (100 * target / jest_mid) -> 4, 8, 8
    assert [r["iter_speedup"] for r in rep["runs"] if r["group"] == "jest"] == pytest.approx([4.0, 8.0, 8.0])
    assert jest["iter_speedup"]["mean"] == pytest.approx(20 / 3)
    assert jest["iter_speedup"]["lo"] < 20 / 3 < jest["iter_speedup"]["hi"]
    assert "mean over 3 seeds" in text and "one seed" not in text
    assert (out / "bootstrap.png").stat().st_size > 1000


def test_report_needs_an_iid_run_and_an_evaluated_run(tmp_path):
    ref, _ = _reference(tmp_path)
    jest = _run(tmp_path, "jest", {"selection": {"method": "jest", "filter_ratio": 0.8}}, [(0, 0.0, 0.0)], 1.0)
    with pytest.raises(ValueError, match="no IID run"):
        bootstrap_report([jest])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no 'eval/icon_retrieval/headline' records"):
        bootstrap_report([empty])


def test_reference_config_selects_on_the_benchmark_selection_metric():
    from jest_ds.config import load_config

    assert load_config("tiny_reference").eval.best_metric == benchmark.SELECTION


def test_benchmark_sets_name_the_roles():
    b = Benchmark.from_sets("shapes_retrieval, shapes_val ,colours")
    assert (b.headline, b.selection, b.zeroshot_top1) == ("eval/shapes_retrieval/headline", "eval/shapes_val/headline",
                                                          "eval/colours/top1")
    assert b.off_target == {}  # the embedded dataset's off-target sets only with its own names
    assert Benchmark.from_sets("icon_retrieval,icon_val,icon_zeroshot") == EMBEDDED
    with pytest.raises(ValueError, match="TEST,VAL,ZEROSHOT"):
        Benchmark.from_sets("a,b")


def test_figure_titles_say_one_seed():
    from jest_ds.reports.speedup_plot import seeds_label

    assert seeds_label(1) == "one seed" and seeds_label(3) == "mean over 3 seeds, 95% t-band"

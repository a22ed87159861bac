import json

import pytest
import yaml

from jest_ds.reports.speedup import first_reach, write_report


def test_first_reach_interpolates_linearly():
    assert first_reach([0, 100, 200], [0.1, 0.3, 0.5], 0.4) == pytest.approx(150.0)
    assert first_reach([0, 100], [0.1, 0.2], 0.5) is None
    assert first_reach([50, 100], [0.6, 0.7], 0.5) == 50.0


def _run(tmp_path, name, method, scores, flops_per_step, f=None):
    d = tmp_path / name
    d.mkdir()
    sel = {"method": method} if f is None else {"method": method, "filter_ratio": f}
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "selection": sel, "train": {"batch_size": 10}}))
    rows = [{"step": s, "eval/score": v, "flops/total": s * flops_per_step} for s, v in scores]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_report_ratios_against_iid(tmp_path):
    iid = _run(tmp_path, "iid", "iid", [(0, 0.0), (100, 0.2), (200, 0.4)], 3.0)
    jest = _run(tmp_path, "jest", "jest", [(0, 0.0), (50, 0.4), (200, 0.6)], 6.0, f=0.8)
    text = write_report([iid, jest], tmp_path / "report", metric="eval/score")
    rows = json.loads((tmp_path / "report" / "speedup.json").read_text())
    by = {r["run"]: r for r in rows}
    assert by["iid"]["iter_speedup"] == pytest.approx(1.0)
    assert by["jest"]["iters_to_target"] == pytest.approx(50.0)
    assert by["jest"]["iter_speedup"] == pytest.approx(4.0)
    assert by["jest"]["flop_speedup"] == pytest.approx(600.0 / 300.0)
    assert by["jest"]["examples_to_target"] == pytest.approx(500.0)
    assert (tmp_path / "report" / "speedup.png").stat().st_size > 1000
    assert "4.00×" in text
    with pytest.raises(ValueError, match="no IID baseline"):
        write_report([jest], tmp_path / "r2", metric="eval/score")


def test_target_met_at_the_start_is_not_reported_as_not_reached(tmp_path):
    iid = _run(tmp_path, "iid", "iid", [(0, 0.3), (10, 0.2)], 3.0)
    jest = _run(tmp_path, "jest", "jest", [(0, 0.3), (10, 0.4)], 6.0, f=0.8)
    text = write_report([iid, jest], tmp_path / "report", metric="eval/score")
    assert "n/a (at start)" in text and "not reached" not in text


# ---------------------------------------------------------------------------- several seeds

from jest_ds.reports.seed_stats import mean_interval, t_quantile  # noqa: E402
from jest_ds.reports.speedup import first_reach as reach, lower_is_better, run_group  # noqa: E402

T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764, 10: 2.2281, 30: 2.0423}  # Student-t tables


def test_t_quantiles_and_interval():
    for df, t in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    mean, lo, hi = mean_interval([4.0, 5.0, 2.0])
    sd = (((4 - 11 / 3) ** 2 + (5 - 11 / 3) ** 2 + (2 - 11 / 3) ** 2) / 2) ** 0.5
    assert mean == pytest.approx(11 / 3)
    assert hi - mean == pytest.approx(mean - lo) == pytest.approx(T975[2] * sd / 3 ** 0.5, rel=1e-4)
    assert mean_interval([7.0])[0] == 7.0 and mean_interval([7.0])[1] != mean_interval([7.0])[1]  # NaN


def test_loss_metrics_are_reached_from_above():
    assert lower_is_better("eval/icons/val_loss") and lower_is_better("loss")
    assert not lower_is_better("eval/score") and lower_is_better("eval/score", "lower")
    assert reach([0, 100, 200], [3.0, 2.0, 1.0], 1.5, lower=True) == pytest.approx(150.0)
    assert reach([0, 100], [3.0, 2.5], 1.0, lower=True) is None
    assert run_group("jest_f0.5_s12") == "jest_f0.5" and run_group("iid") == "iid"


def _seed_run(tmp_path, name, method, seed, points, flops_per_step, f=None, noise=None, metric="eval/score"):
    d = tmp_path / name
    d.mkdir()
    sel = {"method": method} if f is None else {"method": method, "filter_ratio": f}
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "selection": sel,
                                                   "train": {"batch_size": 10, "seed": seed}}))
    rows = [{"step": s, metric: v, "flops/total": s * flops_per_step} for s, v in points]
    if noise is not None:
        rows += [{"step": s, "sel/noisy_share_chosen": noise, "sel/noisy_share_all": 0.25} for s in (10, 20)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"])))
    return d


def test_several_seeds_paired_by_seed_with_t_intervals(tmp_path):
    # IID seed s: linear from 0 to its final (0.2, 0.3, 0.4) at step 200 -> target per seed.
    # JEST reaches its own seed's target at steps 50, 40, 100 -> iteration speedups 4, 5, 2.
    runs = [_seed_run(tmp_path, f"iid_s{s}", "iid", s, [(0, 0.0), (200, fin)], 3.0)
            for s, fin in enumerate((.2, .3, .4))]
    runs += [_seed_run(tmp_path, "jest_s0", "jest", 0, [(0, 0.0), (50, 0.2), (200, 0.5)], 6.0, f=0.8, noise=0.1),
             _seed_run(tmp_path, "jest_s1", "jest", 1, [(0, 0.0), (40, 0.3), (200, 0.6)], 6.0, f=0.8, noise=0.2),
             _seed_run(tmp_path, "jest_s2", "jest", 2, [(0, 0.0), (100, 0.4), (200, 0.5)], 6.0, f=0.8, noise=0.3),
             # a seed with no IID partner, and a method that reaches the target for one seed of two
             _seed_run(tmp_path, "jest_s7", "jest", 7, [(0, 0.0), (200, 0.9)], 6.0, f=0.8),
             _seed_run(tmp_path, "indep_s0", "independent", 0, [(0, 0.0), (100, 0.4)], 6.0, f=0.8),
             _seed_run(tmp_path, "indep_s1", "independent", 1, [(0, 0.0), (100, 0.1)], 6.0, f=0.8)]
    text = write_report(runs, tmp_path / "report", metric="eval/score")
    groups = {g["group"]: g for g in json.loads((tmp_path / "report" / "speedup_groups.json").read_text())}
    jest = groups["jest"]
    assert jest["seeds"] == [0, 1, 2, 7] and jest["unpaired"] == ["jest_s7"]
    assert (jest["paired"], jest["reached"]) == (3, 3)
    sp = jest["iter_speedup"]
    sd = (((4 - 11 / 3) ** 2 + (5 - 11 / 3) ** 2 + (2 - 11 / 3) ** 2) / 2) ** 0.5
    assert sp["mean"] == pytest.approx(11 / 3) and sp["n"] == 3
    assert sp["hi"] - sp["mean"] == pytest.approx(T975[2] * sd / 3 ** 0.5, rel=1e-4)
    # FLOPs: IID 3/step, JEST 6/step -> per-seed FLOP speedup is half the iteration speedup
    assert jest["flop_speedup"]["mean"] == pytest.approx(11 / 6)
    assert jest["iters_to_target"]["mean"] == pytest.approx(190 / 3)
    assert jest["examples_to_target"]["mean"] == pytest.approx(1900 / 3)
    assert jest["final_score"]["mean"] == pytest.approx(1.6 / 3)
    assert groups["iid"]["iter_speedup"]["mean"] == pytest.approx(1.0)
    assert groups["iid"]["iter_speedup"]["hi"] == pytest.approx(1.0)  # zero spread
    indep = groups["indep"]
    assert (indep["paired"], indep["reached"]) == (2, 1)
    assert indep["iters_to_target"]["mean"] == pytest.approx(50.0) and indep["iters_to_target"]["lo"] is None
    assert "| jest | jest f=0.8 | 0,1,2,7 (unpaired: jest_s7) |" in text and "| 3/3 |" in text and "| 1/2 |" in text
    assert "3.67× [" in text
    runs_json = {r["run"]: r for r in json.loads((tmp_path / "report" / "speedup.json").read_text())}
    assert runs_json["jest_s1"]["baseline"] == "iid_s1" and runs_json["jest_s1"]["target"] == pytest.approx(0.3)
    assert "jest_s7" not in runs_json
    for png in ("speedup.png", "selection.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    assert "selection.png" in (tmp_path / "report" / "speedup.md").read_text()


def test_val_loss_speedup_and_grouping_errors(tmp_path):
    m = "eval/icons/val_loss"
    runs = [_seed_run(tmp_path, f"iid_s{s}", "iid", s, [(0, 1.0), (100, 0.6), (200, 0.5)], 1.0, metric=m)
            for s in (0, 1)]
    runs += [_seed_run(tmp_path, f"jest_s{s}", "jest", s, [(0, 1.0), (100, 0.5 - 0.1 * s), (200, 0.4)], 2.0,
                       f=0.8, metric=m) for s in (0, 1)]
    write_report(runs, tmp_path / "report", metric=m)
    groups = {g["group"]: g for g in json.loads((tmp_path / "report" / "speedup_groups.json").read_text())}
    # seed 0: loss 0.5 first at step 100 -> 2x; seed 1: 0.4 at step 100 crosses 0.5 at step 83.3 -> 2.4x
    assert groups["jest"]["iters_to_target"]["mean"] == pytest.approx((100 + 250 / 3) / 2)
    assert groups["jest"]["iter_speedup"]["mean"] == pytest.approx((2.0 + 2.4) / 2)
    assert not (tmp_path / "report" / "selection.png").exists()  # no selection metrics logged
    dup = _seed_run(tmp_path, "jest_again_s1", "jest", 1, [(0, 1.0), (200, 0.4)], 2.0, f=0.8, metric=m)
    with pytest.raises(ValueError, match="group 'jest f=0.8' has two runs with seed 1"):
        write_report(runs + [dup], tmp_path / "r2", metric=m, group_by="method")
    twin = _seed_run(tmp_path, "iid_b_s0", "iid", 0, [(0, 1.0), (200, 0.4)], 1.0, metric=m)
    with pytest.raises(ValueError, match="group 'iid' has two runs with seed 0"):
        write_report(runs + [twin], tmp_path / "r3", metric=m, group_by="method")

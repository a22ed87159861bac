"""Smoke test of tools/bench_train.py (the module jest_ds.tools.bench_train) on the synthetic dataset
(CPU, world size 1)."""

import pytest
import yaml

from synthetic_data import tiny_config
from jest_ds.config import config_from_dict
from jest_ds.reference.build import build_cache
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.train.trainer import Trainer


@pytest.fixture(scope="module")
def bench():
    from jest_ds.tools import bench_train

    return bench_train


@pytest.mark.parametrize("interleave", [0, 1])
def test_bench_train_iid_jest_flexi(bench, synthetic_root, tmp_path, capsys, interleave):
    # an untrained, exported reference exercises the cached-reference path (timing, not quality)
    ref_dir = tmp_path / "ref"
    ref_cfg = tiny_config(synthetic_root, ref_dir, data={"root": str(synthetic_root), "train_part": "curated"},
                          train={"tensorboard": False})
    trainer = Trainer(config_from_dict(ref_cfg), show_progress=False)
    trainer.export()
    trainer.metrics.close()
    cache = tmp_path / "pool_cache"
    build_cache(ref_dir / "export", synthetic_root / "pool", cache,
                CaptionTokenizer.from_file(synthetic_root / "tokenizer.json"), progress=False)

    base = tiny_config(synthetic_root, tmp_path / "unused",
                       selection={"method": "iid", "filter_ratio": 0.75, "n_chunks": 4, "gain": 10.0})
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(base))
    out = tmp_path / "bench.json"
    report = bench.run(["--config", str(config), "--methods", "iid,jest,flexi", "--steps", "2", "--warmup", "1",
                        "--reference", str(ref_dir / "export"), "--reference-cache", str(cache),
                        "--peak-flops", "1e12", "--out", str(out), "--interleave", str(interleave)])

    assert out.exists()
    results = {r["method"]: r for r in report["results"]}
    assert list(results) == ["iid", "jest", "flexi"]
    for m, r in results.items():
        assert r["timed_steps"] == 2 and r["samples_per_s"] > 0 and r["batch_size"] == 32
        ph = r["phase_ms"]
        assert ph["forward"] > 0 and ph["backward"] > 0 and ph["optimizer"] > 0 and ph["data"] > 0
        assert abs(sum(ph.values()) - r["step_ms"]) < 1e-6 * max(1.0, r["step_ms"])  # phases add up
        assert r["mfu"] is not None and 0 < r["mfu"] < 1
        assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_step"]["total"] / (r["step_ms"] / 1e3))
    # IID: score/select return at once (only the wrapper's call is timed)
    assert results["iid"]["phase_ms"]["score"] < 5 and results["iid"]["super_batch_size"] == 32
    assert results["jest"]["phase_ms"]["score"] > 0 and results["jest"]["phase_ms"]["select"] > 0
    assert results["jest"]["super_batch_size"] == 128
    # Flexi scores at the coarse patch and trains half at it: fewer ledger FLOPs than JEST, more than IID
    f = {m: r["flops_per_step"]["total"] for m, r in results.items()}
    assert f["iid"] < f["flexi"] < f["jest"]
    assert set(report["ratio_to_iid"]) == {"jest", "flexi"}
    assert report["ratio_to_iid"]["jest"]["ledger_flops"] == pytest.approx(f["jest"] / f["iid"])

    printed = capsys.readouterr().out
    assert "| method | samples/s | step ms | data ms |" in printed
    assert "jest / iid step time:" in printed and "flexi / iid step time:" in printed
    assert ("interleaved 1 at a time" in printed) == bool(interleave)
    assert results["jest"]["score_micro_batch"] == 32  # the default: the training batch


def test_bench_train_rejects_selection_without_reference(bench, synthetic_root, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_config(synthetic_root, tmp_path / "unused")))
    with pytest.raises(SystemExit):
        bench.main(["--config", str(config), "--methods", "iid,jest", "--steps", "1",
                    "--reference", str(tmp_path / "missing")])

"""The DeepSpeed training step on CPU (world size 1), on the synthetic dataset."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic_data import tiny_config
from jest_ds.config import config_from_dict
from jest_ds.reference.build import build_cache
from jest_ds.reference.cache import CacheMismatchError, ReferenceCache, StaleCacheError
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models.export import load_exported
from jest_ds.train.metrics import read_metrics
from jest_ds.train.trainer import train


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory):
    """A reference trained on the clean curated part, and its cache for the pool."""
    out = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(synthetic_root, out, data={"root": str(synthetic_root), "train_part": "curated"},
                      train={"steps": 150, "eval_every": 0})
    train(config_from_dict(cfg), show_progress=False)
    cache = out / "pool_cache"
    build_cache(out / "export", synthetic_root / "pool", cache,
                CaptionTokenizer.from_file(synthetic_root / "tokenizer.json"), progress=False)
    return out / "export", cache


def _selected_noise(run_dir):
    rows = [r for r in read_metrics(run_dir) if "sel/noisy_share_chosen" in r]
    return (sum(r["sel/noisy_share_chosen"] for r in rows) / len(rows),
            sum(r["sel/noisy_share_all"] for r in rows) / len(rows))


def test_iid_trains_evaluates_and_exports(synthetic_root, tmp_path):
    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, train={"steps": 12, "eval_every": 6}))
    final = train(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert "eval/score" in final and "eval/colours/top1" in final and "eval/shapes_retrieval/i2t_R@1" in final
    assert rows[-1]["flops/training"] > 0 and rows[-1]["flops/scoring"] == 0
    model, loaded_cfg, digest = load_exported(tmp_path / "export")
    assert loaded_cfg.train.steps == 12 and len(digest) == 64
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 12


def test_jest_avoids_planted_noise_that_iid_trains_on(synthetic_root, reference, tmp_path):
    export, cache = reference
    sel = {"method": "jest", "reference": str(export), "filter_ratio": 0.75, "n_chunks": 4, "gain": 10.0}
    cfg = tiny_config(synthetic_root, tmp_path / "jest", selection=sel, train={"steps": 8, "eval_every": 0},
                      data={"root": str(synthetic_root), "reference_cache": str(cache)})
    train(config_from_dict(cfg), show_progress=False)
    chosen, offered = _selected_noise(tmp_path / "jest")
    assert offered > 0.2  # the pool really is noisy
    assert chosen < 0.5 * offered, (chosen, offered)
    rows = [r for r in read_metrics(tmp_path / "jest") if "sel/learnability_chosen" in r]
    assert sum(r["sel/learnability_chosen"] > r["sel/learnability_all"] for r in rows) >= 0.75 * len(rows)
    last = read_metrics(tmp_path / "jest")[-1]
    assert last["flops/scoring"] > 0 and last["flops/selection"] > 0


def test_flexi_and_independent_and_uncached_reference_run(synthetic_root, reference, tmp_path):
    export, cache = reference
    base = {"reference": str(export), "filter_ratio": 0.75, "n_chunks": 4, "gain": 10.0}
    for name, extra in {"flexi": {"method": "jest", "flexi": True},
                        "flexi_zero3": {"method": "jest", "flexi": True},
                        "independent": {"method": "independent"},
                        "uncached": {"method": "jest", "reference_mode": "forward"}}.items():
        cfg = tiny_config(synthetic_root, tmp_path / name, selection={**base, **extra},
                          train={"steps": 3, "eval_every": 0, "zero_stage": 3 if name.endswith("zero3") else 2},
                          data={"root": str(synthetic_root), "reference_cache": str(cache)})
        train(config_from_dict(cfg), show_progress=False)
        last = read_metrics(tmp_path / name)[-1]
        assert last["step"] == 3 and last["loss"] == last["loss"]
        if name == "uncached":
            assert last["flops/reference"] > 0
        if name == "independent":
            assert _selected_noise(tmp_path / name)[0] < 0.5 * _selected_noise(tmp_path / name)[1]


def test_reference_cache_round_trip_and_refusals(synthetic_root, reference, tmp_path):
    export, cache_path = reference
    model, _, digest = load_exported(export)
    cache = ReferenceCache(cache_path, expected_hash=digest)
    assert cache.header["valid"] == 1024 and cache.header["dtype"] == "float16"
    from jest_ds.data.loader import SuperBatchLoader

    tok = CaptionTokenizer.from_file(synthetic_root / "tokenizer.json")
    batch = next(iter(SuperBatchLoader(synthetic_root / "pool", 16, 16, tok, 8)))
    with torch.no_grad():
        enc = model(batch.images, batch.tokens)
    img, txt = cache.lookup(batch.urls, batch.rows, batch.keys)  # the loader's batch finds its rows
    img, txt = img.float(), txt.float()
    assert torch.allclose(img, enc.img, atol=2e-3) and torch.allclose(txt, enc.txt, atol=2e-3)
    with pytest.raises(StaleCacheError, match="not by the configured reference"):
        ReferenceCache(cache_path, expected_hash="0" * 64)
    with pytest.raises(CacheMismatchError, match="the batch has 'nope'"):
        cache.lookup(batch.urls[:1], batch.rows[:1], ["nope"])
    with pytest.raises(FileNotFoundError, match="cache-ref"):
        ReferenceCache(tmp_path / "missing")


def test_training_with_a_stale_cache_is_refused(synthetic_root, reference, tmp_path):
    export, cache = reference
    other = tmp_path / "other_export"
    shutil.copytree(export, other)
    state = load_exported(other)[0].state_dict()
    state["bias"] = state["bias"] + 1.0
    from jest_ds.models.export import export_model

    export_model(state, load_exported(other)[1], other)  # a different checkpoint, same cache path
    sel = {"method": "jest", "reference": str(other), "filter_ratio": 0.75, "n_chunks": 4}
    cfg = tiny_config(synthetic_root, tmp_path / "run", selection=sel, train={"steps": 2},
                      data={"root": str(synthetic_root), "reference_cache": str(cache)})
    with pytest.raises(StaleCacheError):
        train(config_from_dict(cfg), show_progress=False)


def test_corrupt_samples_are_skipped_and_counted(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    from jest_ds.data.shards import write_tar

    write_tar(root / "pool" / "pool-zzz-corrupt.tar",
              [(f"bad{i}", {"png": b"not a png", "txt": b"a red circle", "json": b"{}"}) for i in range(5)])
    (root / "pool" / "pool-zzz-truncated.tar").write_bytes((root / "pool" / "pool-000000.tar").read_bytes()[:3000])
    cfg = tiny_config(root, tmp_path / "run", data={"root": str(root), "train_part": "pool"},
                      train={"steps": 40, "eval_every": 0, "log_every": 40})
    train(config_from_dict(cfg), show_progress=False, )
    last = read_metrics(tmp_path / "run")[-1]
    assert last["data/skipped"] >= 5


def test_cli_missing_data_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  root: {tmp_path / 'nowhere'}\ntrain:\n  out_dir: {tmp_path / 'run'}\n")
    res = subprocess.run([sys.executable, "-m", "jest_ds.cli", "train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("jest-ds: error:") and "nowhere" in last and "jest-ds data build" in last


@pytest.mark.slow
def test_best_eval_is_exported_and_a_plateau_stops_training(synthetic_root, tmp_path):
    """eval.best_metric: the export is the model at its best evaluation (re-evaluating the export gives
    the logged value of that step); eval.patience stops the run after that many evals without improvement.
    A high learning rate makes the held-out loss rise after a few steps, so the plateau comes early."""
    from jest_ds.eval.export_eval import evaluate_export

    metric = "eval/shapes_retrieval/val_loss_batch"
    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, optim={"lr": 0.05, "warmup_fraction": 0.0},
                                       train={"steps": 60, "eval_every": 2},
                                       eval={"best_metric": metric, "best_mode": "min", "patience": 2}))
    train(cfg, show_progress=False)
    evals = [(r["step"], r[metric]) for r in read_metrics(tmp_path) if metric in r and r["step"] > 0]
    best_step, best = min(evals, key=lambda sv: (sv[1], sv[0]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == summary["best"]["step"] == best_step and summary["best"]["value"] == best
    last = evals[-1][0]
    assert last < 60 and last == best_step + 2 * 2  # stopped two evals after the best one
    assert all(v > best for s, v in evals if s > best_step)
    again, _ = evaluate_export(tmp_path / "export", [synthetic_root / "eval/shapes_retrieval"], device="cpu",
                               few_shot=0)
    assert again[metric] == pytest.approx(best, rel=1e-5)
    with pytest.raises(KeyError, match="eval.best_metric = 'eval/nope/x': not among the evaluation metrics"):
        train(config_from_dict(tiny_config(synthetic_root, tmp_path / "bad", train={"steps": 2, "eval_every": 1},
                                           eval={"best_metric": "eval/nope/x"})), show_progress=False)


def test_train_part_joins_parts_with_plus(synthetic_root):
    from jest_ds.train.trainer import resolve_dataset

    cfg = config_from_dict(tiny_config(synthetic_root, synthetic_root / "unused",
                                       data={"root": str(synthetic_root), "train_part": "pool+curated"}))
    _, urls, _ = resolve_dataset(cfg)
    assert [u.split("/")[-2] for u in urls] == ["pool"] * 4 + ["curated"] * 2
    cfg.data.train_part = "pool+nope"
    with pytest.raises(FileNotFoundError, match="data.train_part = 'pool\\+nope': no directory .*nope"):
        resolve_dataset(cfg)

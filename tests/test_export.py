"""The exported artefact: contents, tamper detection, and `jest-ds export` from checkpoints of every kind."""
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dist_utils import run_ranks
from synthetic_data import TINY_MODEL, tiny_config
from jest_ds.cli import main
from jest_ds.config import config_from_dict
from jest_ds.models import DualEncoder
from jest_ds.models.export import (ARTEFACT_FILES, CHECKSUMS, TOKENIZER, WEIGHTS, checksums_text, export_model,
                                   load_exported)
from jest_ds.train.export import checkpoint_state_dict, gather_state_dict
from jest_ds.train.trainer import train


@pytest.fixture(scope="module")
def tiny_cfg(synthetic_root):
    return config_from_dict({"model": {**TINY_MODEL, "vocab_size": 64}, "data": {"root": str(synthetic_root)}})


@pytest.fixture
def exported(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = DualEncoder(tiny_cfg.model)
    digest = export_model(model.state_dict(), tiny_cfg, tmp_path / "export")
    return tmp_path / "export", model, digest


def test_export_is_self_contained_and_hashed_as_a_whole(exported, synthetic_root):
    out, model, digest = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([*ARTEFACT_FILES, CHECKSUMS])
    assert digest == hashlib.sha256((out / CHECKSUMS).read_bytes()).hexdigest()
    for line in (out / CHECKSUMS).read_text().splitlines():  # `sha256sum -c` format
        sha, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    assert (out / TOKENIZER).read_bytes() == (synthetic_root / "tokenizer.json").read_bytes()
    assert json.loads((out / "preprocess.json").read_text())["image_size"] == TINY_MODEL["image_size"]
    weights = load_file(str(out / WEIGHTS))
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    loaded, cfg, loaded_digest = load_exported(out)
    assert loaded_digest == digest and cfg.model == model.cfg


@pytest.mark.parametrize("name", [*ARTEFACT_FILES, CHECKSUMS])
def test_changing_any_file_is_detected(exported, name):
    out, _, _ = exported
    data = bytearray((out / name).read_bytes())
    at = 0 if name == CHECKSUMS else len(data) // 2  # SHA256SUMS: a hex digit of the first file's sum
    data[at] ^= 1
    (out / name).write_bytes(bytes(data))
    first_listed = sorted(ARTEFACT_FILES)[0]
    with pytest.raises(ValueError, match=f"{name if name != CHECKSUMS else first_listed} does not match"):
        load_exported(out)


def test_missing_file_and_old_format_are_refused(exported):
    out, _, _ = exported
    (out / TOKENIZER).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {TOKENIZER}"):
        load_exported(out)
    (out / CHECKSUMS).unlink()
    with pytest.raises(FileNotFoundError, match="jest-ds export --checkpoint"):
        load_exported(out)


def test_any_change_with_rewritten_sums_is_another_model(exported, tmp_path):
    """Editing a file and rewriting SHA256SUMS to match loads, but under another digest (so a
    reference cache made from the original export is refused)."""
    out, _, digest = exported
    for name in ARTEFACT_FILES:
        other = tmp_path / f"edited_{name}"
        shutil.copytree(out, other)
        if name == WEIGHTS:
            state = load_file(str(other / WEIGHTS))
            state["bias"] = state["bias"] + 1.0
            save_file(state, str(other / WEIGHTS), metadata={"format": "pt"})
        else:
            (other / name).write_bytes((other / name).read_bytes() + b"\n")
        (other / CHECKSUMS).write_text(checksums_text(other, ARTEFACT_FILES))
        assert load_exported(other)[2] != digest, name


def test_weights_that_do_not_fit_the_config_are_refused(tiny_cfg, tmp_path):
    state = DualEncoder(tiny_cfg.model).state_dict()
    state["bias"] = torch.zeros(2)
    with pytest.raises(ValueError, match="shape differs for.*bias"):
        export_model(state, tiny_cfg, tmp_path / "x")
    del state["bias"]
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        export_model(state, tiny_cfg, tmp_path / "x")


@pytest.mark.slow
@pytest.mark.parametrize("stage,precision", [(3, "fp32"), (2, "bf16"), (0, "fp32")])
def test_jest_ds_export_from_a_checkpoint_equals_the_in_run_export(synthetic_root, tmp_path, capsys, stage, precision):
    run = tmp_path / "run"
    cfg = tiny_config(synthetic_root, run, train={"steps": 2, "eval_every": 0, "zero_stage": stage,
                                                  "precision": precision})
    train(config_from_dict(cfg), show_progress=False)
    in_run = load_exported(run / "export")[2]
    capsys.readouterr()
    step_dir = run / "checkpoints" / "step_00000002"
    assert main(["export", "--checkpoint", str(step_dir), "--out", str(tmp_path / "offline")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"checkpoint": str(step_dir), "out": str(tmp_path / "offline"), "sha256": in_run}
    # byte-identical artefacts: the same fp32 weights (the master copy under bf16), config, tokenizer
    for name in ARTEFACT_FILES:
        assert (run / "export" / name).read_bytes() == (tmp_path / "offline" / name).read_bytes(), name
    # a run directory resolves to its newest checkpoint
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "again")]) == 0
    assert load_exported(tmp_path / "again")[2] == in_run


def test_jest_ds_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jest-ds: error: --checkpoint") and "\n" not in err


def _zero3_two_ranks(rank, world, cfg_dict, ckpt_root):
    from jest_ds.train.engine import build_engine

    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    engine = build_engine(cfg, DualEncoder(cfg.model), world)
    gen = torch.Generator().manual_seed(rank)
    images = torch.randn(4, 3, 16, 16, generator=gen)
    tokens = torch.randint(5, 64, (4, 8), generator=gen)
    enc = engine(images, tokens)
    engine.backward((enc.img.float() @ enc.txt.float().T).sum() * enc.log_scale.float().sum())
    engine.step()
    own = sum(p.ds_tensor.numel() for p in engine.module.parameters())  # this rank's partition
    state = gather_state_dict(engine)
    engine.save_checkpoint(ckpt_root, tag="step")
    return {"state": state, "own": own, "full": sum(p.ds_numel for p in engine.module.parameters())}


@pytest.mark.slow
def test_zero3_gather_on_two_ranks_leaves_the_full_model_on_rank_0_only(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, model={**TINY_MODEL, "vocab_size": 64},
                      train={"zero_stage": 3, "precision": "bf16", "batch_size": 8})
    rank0, rank1 = run_ranks(_zero3_two_ranks, world=2, args=(cfg, str(tmp_path / "ckpt")))
    assert rank1["state"] is None and rank0["own"] < rank0["full"]  # really partitioned
    offline = checkpoint_state_dict(tmp_path / "ckpt" / "step")
    assert rank0["state"].keys() == offline.keys()
    for k, v in offline.items():
        assert rank0["state"][k].dtype == torch.float32 and torch.equal(rank0["state"][k], v), k

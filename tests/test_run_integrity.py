"""Nothing lost, nothing silently wrong (issue 19): one run per directory, verified loads, the
reference's own tokenizer, one-line storage errors, torn metrics, caption-less zero-shot sets,
values that used to crash later. (Config values alone: tests/test_config_fuzz.py.)"""
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from jest_ds.cli import main
from jest_ds.config import config_from_dict
from jest_ds.train import checkpoint, run_dir
from jest_ds.train.failures import RunDirectoryError, StorageError, writing
from synthetic_data import icon_sample, icon_shards, icon_tokenizer, tiny_config


# --------------------------------------------------------------------------- 1. one run per directory
def _config_file(tmp_path, root, out, name, **optim):
    cfg = tiny_config(root, out, train={"steps": 2, "eval_every": 0, "log_every": 1}, optim=optim)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(run: Path) -> bytes:
    return (run / "export" / "model.safetensors").read_bytes()


def test_a_used_run_directory_is_refused_overwrite_starts_afresh_and_resume_checks_the_config(
        synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    first = _config_file(tmp_path, synthetic_root, run, "first", lr=2e-3)
    second = _config_file(tmp_path, synthetic_root, run, "second", lr=5e-3)
    assert main(["train", "--config", str(first), "--quiet"]) == 0
    old = _weights(run)
    capsys.readouterr()

    assert main(["train", "--config", str(second), "--quiet"]) == 2  # another run's checkpoints are there
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run) in err and "--overwrite" in err and "--resume latest" in err, err
    assert _weights(run) == old  # nothing was touched

    assert main(["train", "--config", str(second), "--quiet", "--overwrite"]) == 0
    assert _weights(run) != old
    ckpt = checkpoint.find_latest(run / "checkpoints")
    saved = json.loads((ckpt / "trainer.json").read_text())["config"]
    assert saved["optim"]["lr"] == 5e-3 and yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 5e-3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    capsys.readouterr()

    # resuming it under the first run's config names the field that differs
    assert main(["train", "--config", str(first), "--quiet", "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "optim.lr: 0.005 -> 0.002" in err, err
    # a field that only changes reporting may differ
    assert main(["train", "--config", str(second), "--quiet", "--resume", "latest",
                 "--set", "train.log_every=5", "--no-export"]) == 0


def _fake_checkpoint(root: Path, step: int, config=None) -> Path:
    d = root / checkpoint.tag_for(step)
    d.mkdir(parents=True)
    (d / "trainer.json").write_text(json.dumps({"step": step, **({"config": config} if config else {})}))
    (d / checkpoint.COMPLETE).write_text(str(step))
    return d


def test_resuming_an_earlier_checkpoint_refuses_later_ones_that_would_outrank_it(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    c10, c20, c30 = (_fake_checkpoint(root, s) for s in (10, 20, 30))
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"step": 30}))
    (tmp_path / "run" / "export").mkdir()
    with pytest.raises(RunDirectoryError, match=r"later checkpoints \(step_00000030\).*--overwrite"):
        run_dir.claim_run_dir(tmp_path / "run", c10, overwrite=False)
    doomed = run_dir.claim_run_dir(tmp_path / "run", c10, overwrite=True)
    assert set(doomed) == {c20, c30, tmp_path / "run" / "export", tmp_path / "run" / "summary.json"}
    assert run_dir.claim_run_dir(tmp_path / "run", c30, overwrite=False) == []
    # resuming another directory's checkpoint into this one would mix two runs too
    other = _fake_checkpoint(tmp_path / "other" / "checkpoints", 5)
    with pytest.raises(RunDirectoryError, match="checkpoints of another run"):
        run_dir.claim_run_dir(tmp_path / "run", other, overwrite=False)
    # a directory holding only an interrupted first save is this run's debris, not another run
    (tmp_path / "kept" / "export").mkdir(parents=True)  # its checkpoints deleted, its export kept
    with pytest.raises(RunDirectoryError, match="it has no complete checkpoint to resume; start afresh"):
        run_dir.claim_run_dir(tmp_path / "kept", None, overwrite=False, resume="latest")
    partial = tmp_path / "fresh" / "checkpoints" / checkpoint.tag_for(4)
    partial.mkdir(parents=True)
    assert run_dir.claim_run_dir(tmp_path / "fresh", None, overwrite=False) == [partial]


def test_pruning_and_latest_go_by_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (9, 10, 100_000_000):  # tag_for pads to 8 digits: 100000000 sorts before 9 by name
        _fake_checkpoint(root, s)
    (root / "latest").unlink(missing_ok=True)
    assert checkpoint.find_latest(root).name == "step_100000000"
    checkpoint._prune(root, keep_last=1)
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step_100000000"]


def test_config_differences_name_each_field_and_allow_reporting_changes():
    a = config_from_dict({}).to_dict()
    b = config_from_dict({"optim": {"lr": 0.5}, "selection": {"gain": 3.0}, "train": {"log_every": 3}}).to_dict()
    assert run_dir.config_differences(a, b) == ["optim.lr: 0.001 -> 0.5", "selection.gain: 100.0 -> 3.0"]


# --------------------------------------------------------------------------- 2. every load verifies
def test_from_pretrained_refuses_a_flipped_bit(short_reference, tmp_path):
    from jest_ds.models import DualEncoder

    export = tmp_path / "export"
    shutil.copytree(short_reference, export)
    DualEncoder.from_pretrained(export)  # intact: loads
    data = bytearray((export / "model.safetensors").read_bytes())
    data[-3] ^= 0x40  # an exponent bit of the last float
    (export / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors does not match SHA256SUMS"):
        DualEncoder.from_pretrained(export)

    model = DualEncoder.from_pretrained(short_reference)
    model.save_pretrained(tmp_path / "hf")  # its own SHA256SUMS: weights and config.json
    assert set(line.split()[1] for line in (tmp_path / "hf" / "SHA256SUMS").read_text().splitlines()) == \
        {"model.safetensors", "config.json"}
    DualEncoder.from_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="no SHA256SUMS"):
        DualEncoder.from_pretrained(tmp_path / "hf")


# --------------------------------------------------------------------------- 3. the reference's tokenizer
def _foreign_tokenizer(tmp_path):
    return icon_tokenizer(tmp_path / "foreign_tokenizer.json")  # another vocabulary than the synthetic one


def test_forward_reference_reads_captions_with_its_own_tokenizer(synthetic_root, short_reference, tmp_path):
    from jest_ds.data.shards import Batch
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.models.export import load_exported
    from jest_ds.reference.scorer import ReferenceScorer

    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path / "run", selection={
        "method": "jest", "reference": str(short_reference), "reference_mode": "forward", "n_chunks": 4}))
    foreign = _foreign_tokenizer(tmp_path)
    captions = ["a red circle", "a blue square", "a green cross"]
    images = torch.randn(3, 3, 16, 16)
    batch = Batch(images=images, tokens=foreign.encode_batch(captions, 8), keys=["a", "b", "c"], meta=[{}] * 3,
                  captions=captions)
    scorer = ReferenceScorer(cfg, [], torch.device("cpu"), 1, foreign)
    got = scorer.embeddings(batch)
    model, ref_cfg, _ = load_exported(short_reference)
    own = CaptionTokenizer.from_file(short_reference / "tokenizer.json")
    want = model(images, own.encode_batch(captions, ref_cfg.model.context_length))
    assert torch.equal(got.txt, want.txt) and torch.equal(got.img, want.img)
    # the run's own tokenizer being the reference's, the batch's tokens are used as they are
    assert ReferenceScorer(cfg, [], torch.device("cpu"), 1, own).tokenizer is None


def test_cache_ref_refuses_a_foreign_tokenizer_and_training_refuses_such_a_cache(short_reference, tmp_path, capsys):
    from jest_ds.reference.build import build_cache
    from jest_ds.reference.cache import HEADER, ReferenceCache, StaleCacheError
    from jest_ds.data.tokenizer import CaptionTokenizer

    shards = tmp_path / "shards"
    icon_shards(shards, 12, 6)
    foreign = tmp_path / "foreign_tokenizer.json"
    _foreign_tokenizer(tmp_path)
    code = main(["cache-ref", "--reference", str(short_reference), "--shards", str(shards), "--out",
                 str(tmp_path / "cache"), "--tokenizer", str(foreign), "--device", "cpu", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "not the reference's own" in err, err

    own = CaptionTokenizer.from_file(short_reference / "tokenizer.json")
    info = build_cache(short_reference, shards, tmp_path / "cache", own, batch_size=8, progress=False)
    assert info["header_written"]
    header = json.loads((tmp_path / "cache" / HEADER).read_text())
    assert header["tokenizer"] == own.fingerprint()
    ReferenceCache(tmp_path / "cache", expected_hash=info["reference_hash"], expected_tokenizer=own.fingerprint())
    header["tokenizer"] = CaptionTokenizer.from_file(foreign).fingerprint()  # a cache made with another one
    (tmp_path / "cache" / HEADER).write_text(json.dumps(header))
    with pytest.raises(StaleCacheError, match="not with the reference's own"):
        ReferenceCache(tmp_path / "cache", expected_hash=info["reference_hash"], expected_tokenizer=own.fingerprint())


# --------------------------------------------------------------------------- 4. full disk, read-only
needs_dev_full = pytest.mark.skipif(not (Path("/dev/full").is_char_device()), reason="needs /dev/full (a full disk)")
class _Engine:
    """Stands in for a DeepSpeed engine: its files are written; trainer.json goes to a full disk."""

    def save_checkpoint(self, root, tag, save_latest):
        d = Path(root) / tag
        d.mkdir(parents=True, exist_ok=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        (d / "trainer.json").symlink_to("/dev/full")


def _torch_save_on_a_full_disk(obj, path):
    # what torch's zip writer raised when the disk filled up (issue 19; writing to /dev/full is
    # buffered and does not fail reliably, a full tmpfs does)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@needs_dev_full
@pytest.mark.parametrize("full, what", [("rank_0.pt", "the write failed part-way, the disk is probably full"),
                                        ("trainer.json", "no space left on the device")])
def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_file(tmp_path, monkeypatch, full, what):
    root = tmp_path / "checkpoints"
    if full == "rank_0.pt":
        monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk)
    with pytest.raises(StorageError) as err:
        checkpoint.save(_Engine(), root, 3, {"x": torch.zeros(1000)}, {"step": 3}, keep_last=2)
    msg = str(err.value)
    assert "\n" not in msg and str(root / "step_00000003" / full) in msg and what in msg and "MiB free" in msg
    assert checkpoint.find_latest(root) is None  # never marked complete


@needs_dev_full
def test_metrics_on_a_full_disk_and_a_read_only_directory(tmp_path, monkeypatch):
    from jest_ds.train.metrics import MetricsWriter

    w = MetricsWriter(tmp_path, tensorboard=False)
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'metrics.jsonl'}: no space left"):
        w.write(1, {"loss": 1.0})
    with pytest.raises(StorageError, match=r"cannot write /ro/x: the file system is read-only \[Errno 30\]"):
        with writing("/ro/x"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(KeyError):  # anything else keeps its own exception (and traceback)
        with writing("/ro/x"):
            raise KeyError("a bug")


@pytest.mark.parametrize("exc, code", [("storage", 1), ("nonfinite", 1)])
def test_a_run_that_has_to_stop_is_one_line_exit_1(monkeypatch, capsys, exc, code):
    import jest_ds.train.trainer as trainer

    def fail(*args, **kwargs):
        if exc == "storage":
            with writing("/runs/x/checkpoints/step_00000010/rank_0.pt"):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        raise trainer.NonFiniteLossError("loss was non-finite for 5 steps in a row (last at step 7); aborting")

    monkeypatch.setattr(trainer, "train", fail)
    assert main(["train", "--config", "tiny_iid", "--quiet"]) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("jest-ds: error:"), err
    assert ("rank_0.pt" in err) if exc == "storage" else ("non-finite" in err)


# --------------------------------------------------------------------------- 5. torn metrics line
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    from jest_ds.train.metrics import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    w = MetricsWriter(tmp_path, tensorboard=False, resume=True)
    w.truncate_after(2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert "cut short" in caplog.text and str(path) in caplog.text
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=f"{path}, line 2: not a JSON record"):
        w.truncate_after(2)


# --------------------------------------------------------------------------- 6. zero-shot without captions
def test_a_zero_shot_set_needs_no_captions(tmp_path):
    from jest_ds.data.eval_sets import load_eval_set
    from jest_ds.data.shards import write_tar

    d = tmp_path / "pets"
    write_tar(d / "pets-000000.tar", [icon_sample(i, txt=None) for i in range(6)])
    (d / "eval.json").write_text(json.dumps({"task": "zeroshot", "classes": ["a", "b", "c"]}))
    s = load_eval_set(d, 16)
    assert len(s) == 6 and s.skipped == {} and s.labels.tolist() == [i % 3 for i in range(6)]
    (d / "eval.json").write_text(json.dumps({"task": "retrieval"}))  # retrieval pairs do need them
    with pytest.raises(ValueError, match="missing_caption"):
        load_eval_set(d, 16)


# --------------------------------------------------------------------------- 7, 8. values that crashed later
def test_vocab_size_below_the_tokenizer_and_a_non_tokenizer_file_are_one_line(synthetic_root, tmp_path):
    from jest_ds.train.trainer import resolve_dataset

    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, model={"vocab_size": 10}))
    with pytest.raises(ValueError, match=r"model.vocab_size = 10: smaller than the vocabulary of the tokenizer"):
        resolve_dataset(cfg)
    for content in (b"\x89PNG\r\n\x1a\n\x00", b'{"vocab": [1, 2]}'):
        bad = tmp_path / "not_a_tokenizer.json"
        bad.write_bytes(content)
        cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, data={"tokenizer": str(bad)}))
        with pytest.raises(ValueError) as err:
            resolve_dataset(cfg)
        msg = str(err.value)
        assert "\n" not in msg and f"data.tokenizer = {str(bad)!r}" in msg and "not a tokenizer.json" in msg, msg


@pytest.mark.parametrize("vocab", ["0", "3", "20"])
def test_a_tokenizer_too_small_for_its_captions_is_refused(tmp_path, capsys, vocab):
    shards = tmp_path / "shards"
    icon_shards(shards, 8, 8)
    code = main(["data", "tokenizer", "--shards", str(shards), "--out", str(tmp_path / "t.json"),
                 "--vocab-size", vocab])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"--vocab-size {vocab}: must be at least" in err, err
    assert not (tmp_path / "t.json").exists()


def test_a_full_disk_under_the_export_weights_is_one_line(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(StorageError, match=r"cannot write .*export: no space left on the device"):
        with writing(tmp_path / "export"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("argv", [["eval", "--model", "m", "--few-shot", "-3"], ["eval", "--model", "m", "--batch-size", "0"],
                                  ["cache-ref", "--reference", "r", "--batch-size", "0"]])
def test_command_line_numbers_out_of_range_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be >=" in capsys.readouterr().err

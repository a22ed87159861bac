"""Export / load a trained dual encoder as a self-contained artefact.

An export directory holds:

    model.safetensors      fp32 weights (the DualEncoder state dict)
    config.json            the model config as huggingface_hub's `from_pretrained` reads it
    config.yaml            the run's whole experiment config
    tokenizer.json         the run's tokenizer, copied byte for byte (`tokenizers`, transformers)
    tokenizer_config.json  special tokens and context length for transformers' AutoTokenizer
    preprocess.json        the image preprocessing (`jest_ds.preprocess.ImagePreprocess`)
    SHA256SUMS             the sha256 of each file above (`sha256sum -c SHA256SUMS` checks them)

The export's digest is the sha256 of SHA256SUMS, so it names every file at once: a
reference-embedding cache records it and training refuses a cache made by another export.
Loading checks each listed file against SHA256SUMS, so a file changed after export is refused.

Weights come from a live engine (`gather_state_dict`: rank 0 assembles the model one
parameter at a time, from the optimizer's fp32 master copy where it keeps one) or from a
checkpoint on disk (`checkpoint_state_dict`: DeepSpeed's offline ZeRO consolidation). Both
read the same fp32 values, so the two exports of one step are identical.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from jest_ds.config import ExperimentConfig, config_from_dict
from jest_ds.data.tokenizer import SPECIAL_TOKENS
from jest_ds.models.dual_encoder import DualEncoder
from jest_ds.preprocess import ImagePreprocess

WEIGHTS = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
HUB_CONFIG = constants.CONFIG_NAME  # config.json
RUN_CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESS = "preprocess.json"
CHECKSUMS = "SHA256SUMS"
ARTEFACT_FILES = (WEIGHTS, HUB_CONFIG, RUN_CONFIG, TOKENIZER, TOKENIZER_CONFIG, PREPROCESS)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- weights
def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_state_dict(engine_or_model) -> dict[str, torch.Tensor] | None:
    """The full fp32 CPU state dict on rank 0, None on the other ranks; every rank must call it.

    Parameters are assembled one at a time, so a rank other than 0 never holds more than one
    full parameter: the optimizer's fp32 master copy where DeepSpeed keeps one (ZeRO-1..3,
    bf16/fp16 training: the weights a checkpoint stores), else the parameter itself, gathered
    from its ZeRO-3 partitions when it is partitioned."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = getattr(engine_or_model, "module", engine_or_model)
    keep = _is_main()
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        p = params.get(name)
        if p is not None:
            full = safe_get_full_fp32_param(p) if p.requires_grad else None  # a collective when partitioned
            if full is not None:
                value = full
            elif hasattr(p, "ds_id"):  # ZeRO-3 parameter without an fp32 master copy
                with deepspeed.zero.GatheredParameters([p]):
                    value = p.data.detach().cpu().clone() if keep else None
            else:
                value = p.detach()
        if keep:
            value = value.detach().cpu()
            out[name] = (value.float() if value.is_floating_point() else value).clone()
    return out if keep else None


def checkpoint_state_dict(step_dir: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a training checkpoint (`<run>/checkpoints/step_*`), on one process.

    ZeRO-1..3 and bf16/fp16 checkpoints: DeepSpeed's offline consolidation of the fp32 master
    weights from every rank's optimizer shard. ZeRO-0 fp32: the module state DeepSpeed saved
    whole. (DeepSpeed checkpoints are pickles: export only checkpoints you trust.)"""
    step_dir = Path(step_dir)
    if any(step_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):  # it prints progress; stdout is the command's result
            state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name)
    else:
        model_file = step_dir / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise FileNotFoundError(f"{step_dir}: no DeepSpeed model states (mp_rank_00_model_states.pt): "
                                    "not a checkpoint directory")
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _check_state_dict(state_dict: dict[str, torch.Tensor], cfg: ExperimentConfig) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DualEncoder(cfg.model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit the config's model: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, shape differs for {[(k, got[k], expected[k]) for k in wrong[:3]]}")


# --------------------------------------------------------------------------- writing
def run_tokenizer_file(cfg: ExperimentConfig) -> Path:
    """The tokenizer a run used: data.tokenizer, else <data.root>/tokenizer.json."""
    return Path(cfg.data.tokenizer) if cfg.data.tokenizer else Path(cfg.data.root) / "tokenizer.json"


def _tokenizer_config(context_length: int) -> dict:
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
            "pad_token": pad, "unk_token": unk, "cls_token": cls, "sep_token": sep, "mask_token": mask,
            "padding_side": "right", "truncation_side": "right"}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def checksums_text(directory: Path, names) -> str:
    """SHA256SUMS content (`sha256sum` format) for these files of `directory`."""
    return "".join(f"{file_sha256(directory / n)}  {n}\n" for n in sorted(names))


def export_model(state_dict: dict[str, torch.Tensor], cfg: ExperimentConfig, out_dir: str | Path,
                 tokenizer_file: str | Path | None = None) -> str:
    """Write the artefact; returns its digest. `tokenizer_file` defaults to the run's (`run_tokenizer_file`)."""
    _check_state_dict(state_dict, cfg)
    tok = Path(tokenizer_file) if tokenizer_file else run_tokenizer_file(cfg)
    if not tok.is_file():
        raise FileNotFoundError(f"tokenizer {tok} not found (data.tokenizer / data.root of the run's config): "
                                "give the run's tokenizer.json explicitly (jest-ds export --tokenizer)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CHECKSUMS).unlink(missing_ok=True)  # a half-rewritten export must never verify
    tmp = out / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    hub = {"cfg": dataclasses.asdict(cfg.model)}  # what DualEncoder.save_pretrained writes
    _write_atomic(out / HUB_CONFIG, json.dumps(hub, sort_keys=True, indent=2).encode())
    _write_atomic(out / RUN_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    _write_atomic(out / TOKENIZER, tok.read_bytes())
    _write_atomic(out / TOKENIZER_CONFIG,
                  (json.dumps(_tokenizer_config(cfg.model.context_length), indent=2) + "\n").encode())
    ImagePreprocess.for_image_size(cfg.model.image_size).save(out / PREPROCESS)
    sums = checksums_text(out, ARTEFACT_FILES)
    _write_atomic(out / CHECKSUMS, sums.encode())
    return hashlib.sha256(sums.encode()).hexdigest()


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint step directory, or the newest complete one under a run or its checkpoints/ directory."""
    from jest_ds.train.checkpoint import COMPLETE, find_latest

    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = find_latest(root) if root.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"--checkpoint {path}: not a complete checkpoint (no {COMPLETE} file) "
                            "and no complete checkpoint under it")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, config: str | Path | None = None,
                      tokenizer_file: str | Path | None = None) -> tuple[str, Path]:
    """`jest-ds export`: a checkpoint -> an artefact, on one process. The run's config.yaml is
    taken from two levels above the step directory unless `config` is given. Returns (digest, step dir)."""
    step_dir = find_checkpoint(checkpoint)
    cfg_path = Path(config) if config else step_dir.parent.parent / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run config {cfg_path} not found: pass --config")
    cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()))
    return export_model(checkpoint_state_dict(step_dir), cfg, out_dir, tokenizer_file), step_dir


# --------------------------------------------------------------------------- reading
def _read_checksums(d: Path, required=ARTEFACT_FILES) -> dict[str, str]:
    sums = d / CHECKSUMS
    if not sums.is_file():
        if not d.is_dir():
            raise FileNotFoundError(f"exported model {d}: no such directory")
        raise FileNotFoundError(f"exported model {d}: no {CHECKSUMS} (not an export, or one written by an "
                                "older jest-ds: export it again with `jest-ds export --checkpoint`)")
    listed = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or Path(name).name != name:
            raise ValueError(f"exported model {d}: malformed line in {CHECKSUMS}: {line!r}")
        listed[name] = digest
    missing = [n for n in required if n not in listed]
    if missing:
        raise ValueError(f"exported model {d}: {CHECKSUMS} does not list {missing}")
    return listed


def _check_file(d: Path, name: str, expected: str) -> Path:
    path = d / name
    if not path.is_file():
        raise FileNotFoundError(f"exported model {d}: missing {name}")
    if file_sha256(path) != expected:
        raise ValueError(f"exported model {d}: {name} does not match {CHECKSUMS} (file changed after export)")
    return path


def verify_export(model_dir: str | Path) -> str:
    """Check every file against SHA256SUMS; returns the export's digest."""
    d = Path(model_dir)
    for name, expected in _read_checksums(d).items():
        _check_file(d, name, expected)
    return hashlib.sha256((d / CHECKSUMS).read_bytes()).hexdigest()


def verify_files(model_dir: str | Path, names, checksums: str | Path | None = None) -> None:
    """Check these files of `model_dir` against its SHA256SUMS (or the `checksums` file given:
    a Hub download keeps each file apart); a `save_pretrained` directory lists only its own."""
    d = Path(model_dir)
    sums = Path(checksums) if checksums else d / CHECKSUMS
    if checksums:
        listed = {}
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            listed[name] = digest
        absent = [n for n in names if n not in listed]
        if absent:
            raise ValueError(f"model {d}: {CHECKSUMS} does not list {absent}")
        for name, path in names.items():
            if file_sha256(Path(path)) != listed[name]:
                raise ValueError(f"model {d}: {name} does not match {CHECKSUMS} (file changed after it was saved)")
        return
    listed = _read_checksums(d, required=list(names))
    for name in names:
        _check_file(d, name, listed[name])


def write_checksums(directory: str | Path, names) -> None:
    """Add or update these files' lines in `directory`/SHA256SUMS (others' lines are kept)."""
    d = Path(directory)
    listed = {}
    if (d / CHECKSUMS).is_file():
        for line in (d / CHECKSUMS).read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                listed[name] = digest
    listed.update({n: file_sha256(d / n) for n in names})
    _write_atomic(d / CHECKSUMS, "".join(f"{listed[n]}  {n}\n" for n in sorted(listed)).encode())


def verified_file(model_dir: str | Path, name: str) -> Path:
    """The path of one artefact file, checked against SHA256SUMS."""
    d = Path(model_dir)
    listed = _read_checksums(d)
    if name not in listed:
        raise ValueError(f"exported model {d}: {CHECKSUMS} does not list {name}")
    return _check_file(d, name, listed[name])


def load_run_config(model_dir: str | Path) -> ExperimentConfig:
    """The experiment config an export was trained with (checked against SHA256SUMS)."""
    return config_from_dict(yaml.safe_load(verified_file(model_dir, RUN_CONFIG).read_text()))


def load_exported(model_dir: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[DualEncoder, ExperimentConfig, str]:
    """(frozen model in eval mode on `device`, the run's config, the export's digest); every file verified."""
    d = Path(model_dir)
    digest = verify_export(d)
    cfg = config_from_dict(yaml.safe_load((d / RUN_CONFIG).read_text()))
    model = DualEncoder(cfg.model)
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg, digest

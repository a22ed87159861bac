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

This module is the artefact format only (write, verify, load). The weights come from the
training side: a live DeepSpeed engine or a checkpoint on disk (`jest_ds/train/export.py`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file, save

from jest_ds.atomic import atomic_write
from jest_ds.config import ExperimentConfig, config_from_dict
from jest_ds.data.tokenizer import SPECIAL_TOKENS
from jest_ds.models.dual_encoder import DualEncoder
from jest_ds.preprocess import ImagePreprocess
from jest_ds.errors import DataError

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


def _check_state_dict(state_dict: dict[str, torch.Tensor], cfg: ExperimentConfig) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DualEncoder(cfg.model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise DataError(f"weights do not fit the config's model: missing {missing[:3]}, unexpected "
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
    atomic_write(out / WEIGHTS, save({k: v.contiguous() for k, v in state_dict.items()}, metadata={"format": "pt"}))
    hub = {"cfg": dataclasses.asdict(cfg.model)}  # what DualEncoder.save_pretrained writes
    atomic_write(out / HUB_CONFIG, json.dumps(hub, sort_keys=True, indent=2).encode())
    atomic_write(out / RUN_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    atomic_write(out / TOKENIZER, tok.read_bytes())
    atomic_write(out / TOKENIZER_CONFIG,
                  (json.dumps(_tokenizer_config(cfg.model.context_length), indent=2) + "\n").encode())
    ImagePreprocess.for_image_size(cfg.model.image_size).save(out / PREPROCESS)
    sums = checksums_text(out, ARTEFACT_FILES)
    atomic_write(out / CHECKSUMS, sums.encode())
    return hashlib.sha256(sums.encode()).hexdigest()


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
            raise DataError(f"exported model {d}: malformed line in {CHECKSUMS}: {line!r}")
        listed[name] = digest
    missing = [n for n in required if n not in listed]
    if missing:
        raise DataError(f"exported model {d}: {CHECKSUMS} does not list {missing}")
    return listed


def _check_file(d: Path, name: str, expected: str) -> Path:
    path = d / name
    if not path.is_file():
        raise FileNotFoundError(f"exported model {d}: missing {name}")
    if file_sha256(path) != expected:
        raise DataError(f"exported model {d}: {name} does not match {CHECKSUMS} (file changed after export)")
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
            raise DataError(f"model {d}: {CHECKSUMS} does not list {absent}")
        for name, path in names.items():
            if file_sha256(Path(path)) != listed[name]:
                raise DataError(f"model {d}: {name} does not match {CHECKSUMS} (file changed after it was saved)")
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
    atomic_write(d / CHECKSUMS, "".join(f"{listed[n]}  {n}\n" for n in sorted(listed)).encode())


def verified_file(model_dir: str | Path, name: str) -> Path:
    """The path of one artefact file, checked against SHA256SUMS."""
    d = Path(model_dir)
    listed = _read_checksums(d)
    if name not in listed:
        raise DataError(f"exported model {d}: {CHECKSUMS} does not list {name}")
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

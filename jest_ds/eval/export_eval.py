"""`jest-ds eval`: an exported model on evaluation sets given by the user.

Everything the model needs comes from the export directory: weights, config and the tokenizer
the run trained with (its `tokenizer.json`, checked against the export's SHA256SUMS), never a
dataset root. Images get the training preprocessing. See docs/evaluation.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jest_ds.data.eval_sets import load_eval_set
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.eval import evaluate
from jest_ds.errors import ConfigError, DataError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; `cuda` without a GPU is an error."""
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r}: must be one of {DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_tokenizer(tokenizer: CaptionTokenizer, vocab_size: int, where: str) -> None:
    """Refuse a tokenizer whose vocabulary is not the model's (its ids would index other embeddings)."""
    if tokenizer.vocab_size != vocab_size:
        raise DataError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
                         f"(model.vocab_size) is {vocab_size}: not the tokenizer this model was trained with")


def evaluate_export(model_dir: str | Path, set_dirs: list[Path], device: str = "auto", few_shot: int = 10,
                    batch_size: int = 256) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics as `jest_ds.eval.evaluate` names them, info: model digest, device, per-set skip reasons)."""
    from jest_ds.inference import get_tokenizer
    from jest_ds.models.export import load_exported

    names = [Path(d).name for d in set_dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # metrics are keyed by the set's directory name
        raise DataError(f"two evaluation sets are named {twice[0]!r}: "
                         f"{[str(d) for d in set_dirs if Path(d).name == twice[0]]}")
    dev = pick_device(device)
    model, cfg, digest = load_exported(model_dir, dev)
    tokenizer = get_tokenizer(model_dir).tokenizer
    check_tokenizer(tokenizer, cfg.model.vocab_size, f"exported model {model_dir}")
    sets = [load_eval_set(d, cfg.model.image_size) for d in set_dirs]
    metrics = evaluate(model, sets, tokenizer, cfg.model.context_length, dev, batch_size, few_shot,
                       loss_batch_size=cfg.train.batch_size)  # val_loss_batch at the size it trained with
    info = {"model": str(model_dir), "sha256": digest, "device": str(dev),
            "sets": {s.name: {"dir": str(d), "task": s.task, "samples": len(s), "skipped": s.skipped}
                     for s, d in zip(sets, set_dirs)}}
    return metrics, info

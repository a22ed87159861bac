"""Use an exported model, in open_clip's shape: the model, its image preprocess and its tokenizer.

    model, preprocess, tokenizer = jest_ds.create_model_and_transforms("runs/my_run/export")
    img = model.encode_image(torch.stack([preprocess(PIL.Image.open(p)) for p in paths]))
    txt = model.encode_text(tokenizer(["a cat", "a dog"]))
    probs = torch.sigmoid(img @ txt.T * model.log_scale.exp() + model.bias)   # SigLIP pair probabilities

Every file is checked against the export's SHA256SUMS before it is used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models.dual_encoder import DualEncoder
from jest_ds.models.export import PREPROCESS, TOKENIZER, load_exported, load_run_config, verified_file
from jest_ds.preprocess import ImagePreprocess
from jest_ds.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TextTokenizer:
    """Callable: a caption or a list of captions -> int64 ``[n, context_length]`` (``[CLS] … [SEP]``, pad 0)."""

    def __init__(self, tokenizer: CaptionTokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer.encode_batch(list(texts), self.context_length)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self.tokenizer.decode(ids)


def get_tokenizer(path: str | Path) -> TextTokenizer:
    """The tokenizer of the export at `path`, with the context length the model was trained at."""
    context_length = load_run_config(path).model.context_length
    return TextTokenizer(CaptionTokenizer.from_file(verified_file(path, TOKENIZER)), context_length)


def get_preprocess(path: str | Path) -> ImagePreprocess:
    """The image preprocessing of the export at `path` (PIL image -> normalised [3, S, S] tensor)."""
    return ImagePreprocess.from_file(verified_file(path, PREPROCESS))


def create_model_and_transforms(path: str | Path, device: str | torch.device | None = None,
                                precision: str = "fp32") -> tuple[DualEncoder, ImagePreprocess, TextTokenizer]:
    """(model, preprocess, tokenizer) for the export at `path`. The model is frozen, in eval mode,
    on `device` (default: the GPU when there is one, else the CPU), with weights in `precision`
    (fp32, bf16 or fp16); `encode_image` / `encode_text` take CPU or device tensors."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r}: must be one of {sorted(PRECISIONS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, _ = load_exported(path, device)
    model.to(PRECISIONS[precision])
    return model, get_preprocess(path), get_tokenizer(path)

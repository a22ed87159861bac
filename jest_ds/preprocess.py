"""An exported model's image preprocessing: a spec (``preprocess.json``) and the callable that applies it.

A model sees an image exactly as training prepared it (`jest_ds.data.shards.prepare_image`):
16-bit and float modes scaled to 8 bits, alpha composited on white, a non-square image padded
to a centred square on white, a bicubic resize to ``image_size``; then the RGB values are
scaled to [0, 1] and normalised per channel, ``(x - mean) / std``. The spec writes every
step down so that code outside jest-ds can reproduce it; reading a spec whose fixed steps
differ from what `prepare_image` does fails (this version cannot apply it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jest_ds.data.shards import MEAN, STD, prepare_image
from jest_ds.errors import DataError

# The steps of `prepare_image`, as the spec records them (fixed: only size, mean and std vary).
FIXED_STEPS = {
    "high_bit_depth": "scale to 8 bits",
    "alpha": "composite on white",
    "pad_to_square": "centred, white",
    "resize": "bicubic",
    "rescale": "1/255",
    "channels": "RGB, channel-first",
}


@dataclass(frozen=True)
class ImagePreprocess:
    """Callable: a PIL image -> float32 ``[3, image_size, image_size]``, normalised as in training."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_image_size(cls, image_size: int) -> "ImagePreprocess":
        """The preprocessing training used for a model with this input size."""
        return cls(image_size, (MEAN,) * 3, (STD,) * 3)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, **FIXED_STEPS, "mean": list(self.mean), "std": list(self.std)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, spec: dict, where: str = "preprocess spec") -> "ImagePreprocess":
        for step, value in FIXED_STEPS.items():
            if spec.get(step) != value:
                raise DataError(f"{where}: {step} = {spec.get(step)!r}; this jest-ds applies {value!r}")
        size, mean, std = spec.get("image_size"), spec.get("mean"), spec.get("std")
        if not isinstance(size, int) or size < 1:
            raise DataError(f"{where}: image_size = {size!r}: must be a positive integer")
        for name, v in (("mean", mean), ("std", std)):
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                raise DataError(f"{where}: {name} = {v!r}: must be a list of 3 numbers (R, G, B)")
        if any(x <= 0 for x in std):
            raise DataError(f"{where}: std = {std!r}: must be positive")
        return cls(size, tuple(float(x) for x in mean), tuple(float(x) for x in std))

    @classmethod
    def from_file(cls, path: str | Path) -> "ImagePreprocess":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"preprocess spec not found: {path}")
        return cls.from_dict(json.loads(path.read_text()), str(path))

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess takes a PIL image, got {type(image).__name__}")
        rgb = np.array(prepare_image(image, self.image_size))  # a writable copy for torch
        pixels = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return pixels.sub_(mean).div_(std).contiguous()

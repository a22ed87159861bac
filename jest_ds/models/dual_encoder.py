"""SigLIP dual encoder: unit-norm image and text embeddings, learnable log-scale and bias."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from jest_ds.config import ModelConfig
from jest_ds.models.towers import ImageTower, TextTower


class Encoded(NamedTuple):
    img: torch.Tensor  # [n, d], unit norm
    txt: torch.Tensor  # [n, d], unit norm
    log_scale: torch.Tensor  # (1,)
    bias: torch.Tensor  # (1,)


class DualEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        # Shape (1,), not 0-dim: DeepSpeed cannot partition 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), float(cfg.init_log_scale)))
        self.bias = nn.Parameter(torch.full((1,), float(cfg.init_bias)))

    def forward(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                patch_size: int | None = None, coarse_count: int = 0) -> Encoded:
        """Encode a batch. The LAST `coarse_count` images go through the coarse patch size
        (Flexi-JEST's two-resolution training); the others through `patch_size` (default: base).
        The scale and bias are read here, inside forward, so ZeRO-3 has gathered them."""
        img = txt = None
        if images is not None:
            n_fine = images.shape[0] - coarse_count
            parts = []
            if n_fine > 0:
                parts.append(self.image(images[:n_fine], patch_size))
            if coarse_count > 0:
                parts.append(self.image(images[n_fine:], self.cfg.coarse_patch_size))
            img = F.normalize(torch.cat(parts) if len(parts) > 1 else parts[0], dim=-1)
        if tokens is not None:
            txt = F.normalize(self.text(tokens), dim=-1)
        return Encoded(img, txt, self.log_scale * 1.0, self.bias * 1.0)

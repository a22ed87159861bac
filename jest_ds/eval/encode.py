"""Batched, gradient-free encoding of evaluation images and captions."""
from __future__ import annotations

import torch


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int, device, patch_size: int | None = None) -> torch.Tensor:
    out = []
    for i in range(0, images.shape[0], batch_size):
        enc = model(images[i:i + batch_size].to(device), None, patch_size=patch_size)
        out.append(enc.img.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokens: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        out.append(model(None, tokens[i:i + batch_size].to(device)).txt.float().cpu())
    return torch.cat(out)

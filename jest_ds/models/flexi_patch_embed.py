"""FlexiViT patch embedding: one stored kernel, any patch size per call.

The module OWNS the kernel it convolves (required under ZeRO-3, where a parent
reading a child's partitioned weight sees an empty tensor). At the base patch
size it is exactly timm's PatchEmbed (a strided conv); at another size the
kernel is resampled with FlexiViT's pseudo-inverse resize (timm's
`resample_patch_embed`, Beyer et al. 2023), so token features keep their
meaning across resolutions. Position embeddings are resampled by timm's
VisionTransformer when it is built with ``dynamic_img_size=True``; that is
why this module returns NHWC feature maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import resample_patch_embed


class FlexiPatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)  # the base patch: the stored kernel's size
        self.grid_size = (img_size // patch_size, img_size // patch_size)  # timm resamples pos-embeds from this
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.active_patch_size: int | None = None  # set by ImageTower for one call

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0]

    def kernel_for(self, patch_size: int) -> torch.Tensor:
        """The stored kernel resampled to `patch_size` (the stored one at the base size)."""
        if patch_size == self.patch_size[0]:
            return self.proj.weight
        return resample_patch_embed(self.proj.weight, [patch_size, patch_size])

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        p = patch_size or self.active_patch_size or self.patch_size[0]
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"FlexiPatchEmbed: image size {tuple(x.shape[-2:])} is not divisible by patch size {p}")
        if p == self.patch_size[0]:
            x = self.proj(x)  # exactly timm's PatchEmbed path
        else:
            x = F.conv2d(x, self.kernel_for(p), self.proj.bias, stride=p)
        return x.permute(0, 2, 3, 1)  # NHWC, flattened after pos-embed by timm

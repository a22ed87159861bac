"""FlexiViT patch embedding: one stored kernel, any patch size per call.

The module OWNS the kernel it convolves (required under ZeRO-3, where a parent
reading a child's partitioned weight sees an empty tensor). At the base patch
size it is exactly timm's PatchEmbed (a strided conv); at another size the
kernel is resampled with FlexiViT's pseudo-inverse resize (Beyer et al. 2023).
With R [q², p²] the matrix that resizes a flattened p×p patch to q×q (bicubic
with antialiasing, as timm's `resample_patch_embed` does by default), the
flattened q×q kernel is w_q = pinv(Rᵀ) w_p, i.e. w_qᵀ = w_pᵀ pinv(R), so
<R x, w_q> = <x, w_p> for every patch x when q ≥ p (least squares when q < p).

pinv(R) depends only on (p, q): it is computed once per target size and device
and kept in a plain dict (not a parameter, not a buffer: a bf16 engine's cast
would round a buffer, and ZeRO-3 need only gather the kernel this module owns),
and applied in float32 whatever the kernel's dtype.

Position embeddings are resampled by timm's VisionTransformer when it is built
with ``dynamic_img_size=True``; that is why this module returns NHWC feature maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESIZE_MODE = "bicubic"  # the resize the pseudo-inverse inverts (timm's resample_patch_embed default)
RESIZE_ANTIALIAS = True


def resize_matrix(old: int, new: int, mode: str = RESIZE_MODE, antialias: bool = RESIZE_ANTIALIAS) -> torch.Tensor:
    """R [new², old²] (float64): column k is the k-th one-hot old×old patch resized to new×new."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode=mode, antialias=antialias, align_corners=False)
    return resized.reshape(old * old, new * new).T


def pinv_resize_matrix(old: int, new: int, mode: str = RESIZE_MODE, antialias: bool = RESIZE_ANTIALIAS) -> torch.Tensor:
    """pinv(R) [old², new²] as float32 (computed in float64): a flattened kernel row w_pᵀ maps to w_pᵀ pinv(R)."""
    return torch.linalg.pinv(resize_matrix(old, new, mode, antialias)).float()


def resample_kernel(kernel: torch.Tensor, pinv: torch.Tensor, new: int) -> torch.Tensor:
    """[D, C, p, p] kernel -> [D, C, new, new] with a `pinv_resize_matrix`; float32 math (autocast off),
    returned in the kernel's dtype."""
    d, c = kernel.shape[:2]
    autocast_device = kernel.device.type if kernel.device.type in ("cpu", "cuda") else "cpu"  # e.g. "meta" has none
    with torch.autocast(device_type=autocast_device, enabled=False):
        flat = kernel.reshape(d, c, -1).float() @ pinv
    return flat.reshape(d, c, new, new).to(kernel.dtype)


class FlexiPatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)  # the base patch: the stored kernel's size
        self.grid_size = (img_size // patch_size, img_size // patch_size)  # timm resamples pos-embeds from this
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.active_patch_size: int | None = None  # set by ImageTower for one call
        self.pinv_cache: dict[tuple[int, torch.device], torch.Tensor] = {}  # (patch size, device) -> pinv(R)

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0]

    def pinv_for(self, patch_size: int, device: torch.device) -> torch.Tensor:
        """pinv(R) for the base patch -> `patch_size` on `device` (float32), computed on first use."""
        key = (patch_size, torch.device(device))
        if key not in self.pinv_cache:
            self.pinv_cache[key] = pinv_resize_matrix(self.patch_size[0], patch_size).to(device)
        return self.pinv_cache[key]

    def kernel_for(self, patch_size: int) -> torch.Tensor:
        """The stored kernel resampled to `patch_size` (the stored one at the base size)."""
        weight = self.proj.weight
        if patch_size == self.patch_size[0]:
            return weight
        return resample_kernel(weight, self.pinv_for(patch_size, weight.device), patch_size)

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        p = patch_size or self.active_patch_size or self.patch_size[0]
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"FlexiPatchEmbed: image size {tuple(x.shape[-2:])} is not divisible by patch size {p}")
        if p == self.patch_size[0]:
            x = self.proj(x)  # exactly timm's PatchEmbed path
        else:
            x = F.conv2d(x, self.kernel_for(p), self.proj.bias, stride=p)
        return x.permute(0, 2, 3, 1)  # NHWC, flattened after pos-embed by timm

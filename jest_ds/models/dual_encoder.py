"""SigLIP dual encoder: unit-norm image and text embeddings, learnable log-scale and bias.

`save_pretrained(dir)` / `from_pretrained(dir or Hub id)` / `push_to_hub` come from
huggingface_hub's `PyTorchModelHubMixin`: ``model.safetensors`` + ``config.json`` (``{"cfg": ModelConfig}``),
plus ``SHA256SUMS`` listing both: `from_pretrained` checks them against it, as every loader of
an export does (a directory or Hub repository without it is refused).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors.torch import load_file
from torch import nn

from jest_ds.config import ModelConfig, config_from_dict
from jest_ds.data.shards import normalise
from jest_ds.models.towers import ImageTower, TextTower


class Encoded(NamedTuple):
    img: torch.Tensor  # [n, d], unit norm
    txt: torch.Tensor  # [n, d], unit norm
    log_scale: torch.Tensor  # (1,)
    bias: torch.Tensor  # (1,)


def encode_in_micro_batches(model, images: torch.Tensor, tokens: torch.Tensor, micro_batch: int,
                            **kwargs) -> Encoded:
    """``model(images, tokens, **kwargs)`` on consecutive slices of ``micro_batch`` rows, concatenated
    (one call when ``micro_batch`` is 0 or covers every row). Each row is encoded on its own, so the
    embeddings are those of one call up to BLAS blocking (tests/test_score_micro_batch.py); the
    activations held at once shrink to a slice, which on a CPU is also faster (docs/benchmarks.md).
    Under ZeRO-3 every rank must make the same number of calls: give every rank the same row count."""
    n = images.shape[0]
    if micro_batch <= 0 or micro_batch >= n:
        return model(images, tokens, **kwargs)
    parts = [model(images[i:i + micro_batch], tokens[i:i + micro_batch], **kwargs) for i in range(0, n, micro_batch)]
    return Encoded(torch.cat([p.img for p in parts]), torch.cat([p.txt for p in parts]), parts[0].log_scale,
                   parts[0].bias)


class DualEncoder(nn.Module, PyTorchModelHubMixin, library_name="jest-ds", tags=["siglip", "image-text"]):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        # Shape (1,), not 0-dim: DeepSpeed cannot partition 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), float(cfg.init_log_scale)))
        self.bias = nn.Parameter(torch.full((1,), float(cfg.init_bias)))

    def forward(self, images: torch.Tensor | None, tokens: torch.Tensor | None,
                patch_size: int | None = None, coarse: torch.Tensor | None = None) -> Encoded:
        """Encode a batch. Images where the bool mask `coarse` [n] is True go through the coarse
        patch size (Flexi-JEST's two-resolution training), the others through `patch_size`
        (default: base); row i of the result is image i whatever its patch size.
        The scale and bias are read here, inside forward, so ZeRO-3 has gathered them."""
        img = txt = None
        if images is not None:
            # Inputs arrive as float32; under bf16/fp16 the engine has cast the weights, so the
            # images follow the kernel's dtype (read from the parameter: under ZeRO-3 a
            # partitioned parameter still carries it). Token ids stay integers.
            if images.dtype == torch.uint8:  # the training loader's pixels, normalised here on the device
                images = normalise(images)
            images = images.to(self.image.trunk.patch_embed.proj.weight.dtype)
            if coarse is None or not bool(coarse.any()):
                img = self.image(images, patch_size)
            else:
                if coarse.shape != images.shape[:1] or coarse.dtype != torch.bool:
                    raise ValueError(f"DualEncoder: coarse must be a bool mask of shape ({images.shape[0]},), "
                                     f"got {coarse.dtype} {tuple(coarse.shape)}")
                coarse = coarse.to(images.device)
                fine_idx, coarse_idx = (~coarse).nonzero().squeeze(1), coarse.nonzero().squeeze(1)
                parts = [self.image(images[coarse_idx], self.cfg.coarse_patch_size)]
                if fine_idx.numel():
                    parts.insert(0, self.image(images[fine_idx], patch_size))
                # rows come out as [fine..., coarse...]; put each back at its image's position
                img = torch.cat(parts)[torch.argsort(torch.cat([fine_idx, coarse_idx]))]
            img = F.normalize(img, dim=-1)
        if tokens is not None:
            txt = F.normalize(self.text(tokens), dim=-1)
        return Encoded(img, txt, self.log_scale * 1.0, self.bias * 1.0)

    # ------------------------------------------------------------------ inference (a plain, unpartitioned module)
    def encode_image(self, images: torch.Tensor, normalize: bool = True, patch_size: int | None = None) -> torch.Tensor:
        """[n, embed_dim] image embeddings (unit norm when `normalize`) of images made by the
        export's preprocess; moved to the model's device and dtype."""
        kernel = self.image.trunk.patch_embed.proj.weight
        images = images.to(kernel.device)
        if images.dtype == torch.uint8:
            images = normalise(images)
        x = self.image(images.to(dtype=kernel.dtype), patch_size)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[n, embed_dim] text embeddings (unit norm when `normalize`) of the tokenizer's int64 ids."""
        x = self.text(tokens.to(self.log_scale.device))
        return F.normalize(x, dim=-1) if normalize else x

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, cfg: dict | None = None,
                         map_location: str = "cpu") -> "DualEncoder":
        """huggingface_hub's loading hook: the config from config.json, the weights (all of them) from model.safetensors."""
        from jest_ds.models.export import CHECKSUMS, verify_files

        if cfg is None:
            raise FileNotFoundError(f"{model_id}: no {constants.CONFIG_NAME} holding the model config ('cfg')")
        names = (constants.SAFETENSORS_SINGLE_FILE, constants.CONFIG_NAME)
        if Path(model_id).is_dir():
            verify_files(model_id, names)
            weights = Path(model_id) / constants.SAFETENSORS_SINGLE_FILE
        else:
            files = {n: hf_hub_download(model_id, n, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, local_files_only=local_files_only,
                                        token=token) for n in (*names, CHECKSUMS)}
            verify_files(model_id, {n: files[n] for n in names}, checksums=files[CHECKSUMS])
            weights = files[constants.SAFETENSORS_SINGLE_FILE]
        model = cls(config_from_dict({"model": cfg}).model)
        model.load_state_dict(load_file(str(weights), device=str(map_location)))
        return model.eval()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """huggingface_hub's save_pretrained, then SHA256SUMS for the weights and config.json
        (written before any push, so a pushed repository carries it)."""
        from jest_ds.models.export import write_checksums

        push = kwargs.pop("push_to_hub", False)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_checksums(save_directory, (constants.SAFETENSORS_SINGLE_FILE, constants.CONFIG_NAME))
        if push:  # as the mixin does: push_to_hub saves (with SHA256SUMS, above) into a temporary folder
            rest = {k: v for k, v in kwargs.items() if k not in ("repo_id", "config", "model_card_kwargs")}
            return self.push_to_hub(repo_id=kwargs.get("repo_id") or Path(save_directory).name,
                                    config=kwargs.get("config"), model_card_kwargs=kwargs.get("model_card_kwargs"),
                                    **rest)
        return out

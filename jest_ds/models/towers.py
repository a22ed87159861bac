"""The two encoders of the dual encoder, built from config with no download.

Image tower: timm VisionTransformer (no class token, average pooling, SigLIP
style), its patch embedding replaced by `FlexiPatchEmbed` so the patch size is a
forward-time argument. Text tower: a transformers BERT encoder built from a
BertConfig; the [CLS] state is projected to the joint embedding space.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertModel

from jest_ds.config import ModelConfig
from jest_ds.models.flexi_patch_embed import FlexiPatchEmbed


def build_vit(cfg: ModelConfig) -> VisionTransformer:
    """A stock timm ViT for this config (the reference the flexible tower must equal at the base patch)."""
    return VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=3, num_classes=cfg.embed_dim,
        global_pool="avg", class_token=False, embed_dim=cfg.vision_width, depth=cfg.vision_depth,
        num_heads=cfg.vision_heads, mlp_ratio=cfg.mlp_ratio, dynamic_img_size=True,
    )


class ImageTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.base_patch_size = cfg.patch_size
        self.trunk = build_vit(cfg)
        stock = self.trunk.patch_embed
        flexi = FlexiPatchEmbed(cfg.image_size, cfg.patch_size, 3, cfg.vision_width, bias=stock.proj.bias is not None)
        flexi.proj.load_state_dict(stock.proj.state_dict())
        self.trunk.patch_embed = flexi

    def forward(self, images: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        # The trunk is called as a module (not piecewise) so ZeRO-3 gathers its parameters.
        embed = self.trunk.patch_embed
        embed.active_patch_size = patch_size or self.base_patch_size
        try:
            return self.trunk(images)
        finally:
            embed.active_patch_size = None


def build_bert_config(cfg: ModelConfig) -> BertConfig:
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_depth,
        num_attention_heads=cfg.text_heads, intermediate_size=int(cfg.text_width * cfg.mlp_ratio),
        max_position_embeddings=cfg.context_length, type_vocab_size=1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )


class TextTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("TextTower: model.vocab_size must be set (it is read from the dataset tokenizer)")
        self.bert = BertModel(build_bert_config(cfg), add_pooling_layer=False)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).long()
        hidden = self.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        return self.proj(hidden[:, 0])

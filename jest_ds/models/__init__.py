"""Model components: flexible patch embedding, the two towers, the dual encoder."""
from jest_ds.models.dual_encoder import DualEncoder, Encoded, encode_in_micro_batches
from jest_ds.models.flexi_patch_embed import FlexiPatchEmbed
from jest_ds.models.towers import ImageTower, TextTower, build_vit

__all__ = ["DualEncoder", "Encoded", "encode_in_micro_batches", "FlexiPatchEmbed", "ImageTower", "TextTower", "build_vit"]

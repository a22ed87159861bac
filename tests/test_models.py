import math

import pytest
import torch

from jest_ds.config import ModelConfig
from jest_ds.models import DualEncoder, FlexiPatchEmbed, build_vit

CFG = ModelConfig(image_size=32, patch_size=4, coarse_patch_size=8, vision_width=32, vision_depth=2, vision_heads=2,
                  text_width=32, text_depth=1, text_heads=2, context_length=8, vocab_size=50, embed_dim=16)


def _model(seed=0):
    torch.manual_seed(seed)
    return DualEncoder(CFG)


def test_base_patch_equals_stock_timm():
    model = _model()
    stock = build_vit(CFG)
    state = {k[len("image.trunk."):]: v for k, v in model.state_dict().items() if k.startswith("image.trunk.")}
    stock.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(stock(x), model.image(x))
    assert torch.equal(stock(x), model.image(x, patch_size=4))


def test_coarse_patch_gradients_reach_kernel_and_pos_embed():
    model = _model()
    out = model.image(torch.randn(2, 3, 32, 32), patch_size=8)
    assert out.shape == (2, CFG.embed_dim)
    out.square().sum().backward()
    trunk = model.image.trunk
    assert trunk.patch_embed.proj.weight.grad is not None and trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert trunk.pos_embed.grad is not None and trunk.pos_embed.grad.abs().sum() > 0


def test_flexi_kernel_resample_preserves_upsampled_tokens():
    """FlexiViT's PI-resize property: the resampled kernel on each patch upsampled with the same
    (bicubic, antialiased) resize gives the same token as the stored kernel on the original patch."""
    torch.manual_seed(0)
    embed = FlexiPatchEmbed(img_size=16, patch_size=4, in_chans=3, embed_dim=8, bias=False)
    x = torch.randn(1, 3, 16, 16)
    small = embed(x, patch_size=4)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # [1, 3, 4, 4, 4, 4]: grid rows, grid cols, patch
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 4, 4)
    up = torch.nn.functional.interpolate(flat, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    up_img = up.reshape(1, 4, 4, 3, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(1, 3, 32, 32)
    big = embed(up_img, patch_size=8)
    assert small.shape == big.shape
    assert torch.allclose(small, big, atol=1e-4, rtol=1e-4), (small - big).abs().max()
    # a naive kernel upsampling (no pseudo-inverse) does NOT have this property
    naive = torch.nn.functional.interpolate(embed.proj.weight, size=(8, 8), mode="bicubic", align_corners=False)
    wrong = torch.nn.functional.conv2d(up_img, naive, stride=8).permute(0, 2, 3, 1)
    assert not torch.allclose(small, wrong, atol=1e-2)
    with pytest.raises(ValueError, match="not divisible"):
        embed(x, patch_size=5)


def test_dual_encoder_outputs_and_siglip_init():
    model = _model()
    enc = model(torch.randn(4, 3, 32, 32), torch.randint(1, 50, (4, 8)), coarse=torch.tensor([False, True, False, True]))
    assert enc.img.shape == enc.txt.shape == (4, 16)
    assert torch.allclose(enc.img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(enc.txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert enc.log_scale.shape == (1,) and math.isclose(enc.log_scale.item(), math.log(10), rel_tol=1e-6)
    assert enc.bias.shape == (1,) and enc.bias.item() == -10.0
    # the masked images went through the coarse patch, in place: they equal a coarse-only encode
    images = torch.randn(4, 3, 32, 32)
    mixed = model(images, None, coarse=torch.tensor([False, True, False, True])).img
    coarse = model(images[1::2], None, patch_size=8).img
    fine = model(images[0::2], None).img
    assert torch.allclose(mixed[1::2], coarse, atol=1e-6) and torch.allclose(mixed[0::2], fine, atol=1e-6)
    assert not torch.allclose(model(images[1::2], None).img, coarse, atol=1e-3)


def test_padding_tokens_do_not_change_text_embedding():
    model = _model()
    tok = torch.tensor([[2, 7, 9, 3, 0, 0, 0, 0]])
    longer = torch.tensor([[2, 7, 9, 3, 0, 0, 0, 0, 0, 0]])[:, :8]
    assert torch.allclose(model(None, tok).txt, model(None, longer).txt)

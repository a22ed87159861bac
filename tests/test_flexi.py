"""Flexi-JEST: the random per-step low-resolution half, and the cached FlexiViT pseudo-inverse."""
import copy

import numpy as np
import pytest
import torch
from timm.layers import resample_patch_embed

from synthetic_data import TINY_MODEL, tiny_config
from jest_ds.config import ModelConfig, config_from_dict
from jest_ds.losses import sigmoid_loss_dense
from jest_ds.models import DualEncoder, FlexiPatchEmbed
from jest_ds.models import flexi_patch_embed
from jest_ds.train.resolution_split import coarse_mask


# ---------------------------------------------------------------------------- the random split

def test_coarse_mask_has_the_exact_share_on_every_rank_and_is_reproducible():
    for world in (1, 2, 4):
        masks = [coarse_mask(3, 7, 32, 0.5, rank=r, world_size=world) for r in range(world)]
        assert all(m.dtype == torch.bool and m.shape == (32 // world,) for m in masks)
        assert all(int(m.sum()) == 16 // world for m in masks)
    assert int(coarse_mask(0, 0, 20, 0.25).sum()) == 5
    assert torch.equal(coarse_mask(3, 7, 32, 0.5), coarse_mask(3, 7, 32, 0.5))  # same seed and step
    assert not torch.equal(coarse_mask(3, 7, 32, 0.5), coarse_mask(4, 7, 32, 0.5))  # another seed
    assert len({tuple(coarse_mask(3, s, 32, 0.5).tolist()) for s in range(50)}) == 50  # varies with the step
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        coarse_mask(0, 0, 32, 0.5, world_size=3)


def _chi_square_uniform(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_every_position_is_equally_likely_to_be_coarse():
    """Over 4,000 steps each of 16 positions should be coarse ~2,000 times. Chi-square with 15
    degrees of freedom: 37.7 is its 99.9% quantile. The former rule (always the last half) fails."""
    steps, b = 4000, 16
    counts = np.zeros(b)
    pair = 0  # positions 0 and 1 coarse together: 1/2 · 7/15 of the steps for a uniform subset
    for s in range(steps):
        m = coarse_mask(11, s, b, 0.5).numpy()
        counts += m
        pair += m[0] and m[1]
    assert _chi_square_uniform(counts) < 37.7, counts
    assert abs(pair / steps - 7 / 30) < 4 * np.sqrt((7 / 30) * (23 / 30) / steps)
    last_half = np.r_[np.zeros(b // 2), np.full(b // 2, steps)]
    assert _chi_square_uniform(last_half) > 1000
    # each rank's slice is uniform too
    counts1 = sum(coarse_mask(11, s, b, 0.5, rank=1, world_size=2).numpy().astype(float) for s in range(steps))
    assert _chi_square_uniform(counts1) < 24.3  # df 7, 99.9%


CFG = ModelConfig(**TINY_MODEL, vocab_size=64)


def _dense_flexi_embeddings(model, images, mask):
    """Each image encoded on its own, at the patch the mask assigns it."""
    rows = [model(images[i:i + 1], None, patch_size=CFG.coarse_patch_size if mask[i] else CFG.patch_size).img
            for i in range(images.shape[0])]
    return torch.cat(rows)


def test_mixed_resolution_encode_matches_a_dense_recomputation():
    torch.manual_seed(0)
    model = DualEncoder(CFG).eval()
    images, tokens = torch.randn(8, 3, 16, 16), torch.randint(1, 64, (8, 8))
    mask = coarse_mask(0, 5, 8, 0.5)
    with torch.no_grad():
        enc = model(images, tokens, coarse=mask)
        dense = _dense_flexi_embeddings(model, images, mask)
    assert torch.allclose(enc.img, dense, atol=1e-5), (enc.img - dense).abs().max()
    loss = sigmoid_loss_dense(enc.img, enc.txt, enc.log_scale, enc.bias)
    assert torch.allclose(loss, sigmoid_loss_dense(dense, enc.txt, enc.log_scale, enc.bias), rtol=1e-5)
    with torch.no_grad():  # the positions matter: the last-half assignment gives other embeddings
        other = model(images, None, coarse=torch.arange(8) >= 4).img
    assert not torch.allclose(enc.img, other, atol=1e-3)
    with pytest.raises(ValueError, match="bool mask of shape"):
        model(images, None, coarse=torch.ones(7, dtype=torch.bool))


@pytest.mark.slow
def test_trainer_step_loss_equals_dense_recomputation(synthetic_root, tmp_path):
    """The loss of a real Flexi-JEST training step is the sigmoid loss of embeddings computed one
    image at a time at the patch `coarse_mask(seed, step)` assigns (weights as before the step)."""
    from jest_ds.train.trainer import Trainer, take

    cfg = config_from_dict(tiny_config(
        synthetic_root, tmp_path, selection={"method": "jest", "score": "hard_learner", "flexi": True,
                                             "filter_ratio": 0.5, "n_chunks": 4},
        train={"seed": 5, "batch_size": 16, "eval_every": 0}))
    trainer = Trainer(cfg, show_progress=False)
    try:
        batches = trainer.batch_generator()
        for step in range(2):
            batch = take(next(batches), torch.arange(16))
            before = copy.deepcopy(trainer.engine.module).eval()
            loss = trainer.forward_backward_step(batch)["loss"]
            mask = coarse_mask(5, step, 16, 0.5)
            with torch.no_grad():
                dense = _dense_flexi_embeddings(before, batch.images, mask)
                enc = before(None, batch.tokens)
                expected = float(sigmoid_loss_dense(dense, enc.txt, enc.log_scale, enc.bias))
                last_half = before(batch.images, None, coarse=torch.arange(16) >= 8).img
                old_rule = float(sigmoid_loss_dense(last_half, enc.txt, enc.log_scale, enc.bias))
            assert loss == pytest.approx(expected, rel=1e-5)
            assert abs(old_rule - expected) > 1e-4  # the test can tell the two rules apart
            trainer.step += 1
    finally:
        trainer.close()


# ---------------------------------------------------------------------------- the cached pseudo-inverse

@pytest.mark.parametrize("base,new", [(4, 8), (8, 16), (16, 32), (8, 4), (16, 8)])
def test_resampled_kernel_equals_timm_and_so_do_gradients(base, new):
    torch.manual_seed(base + new)
    embed = FlexiPatchEmbed(img_size=32, patch_size=base, in_chans=3, embed_dim=6)
    weight = embed.proj.weight
    ours = embed.kernel_for(new)
    timm = resample_patch_embed(weight, [new, new])
    assert ours.shape == timm.shape == (6, 3, new, new)
    scale = float(timm.detach().abs().max())
    assert torch.allclose(ours, timm, rtol=1e-4, atol=1e-5 * scale), (ours - timm).abs().max()
    probe = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad((ours * probe).sum(), weight)
    (g_timm,) = torch.autograd.grad((timm * probe).sum(), weight)
    assert torch.allclose(g_ours, g_timm, rtol=1e-4, atol=1e-5 * float(g_timm.abs().max()))


def test_bf16_kernel_is_resampled_in_float32():
    torch.manual_seed(0)
    embed = FlexiPatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=6)
    fp32 = embed.kernel_for(16)
    embed.to(torch.bfloat16)
    half = embed.kernel_for(16)
    assert half.dtype == torch.bfloat16
    # only the final rounding to bf16 differs from the float32 result (of the bf16-rounded kernel)
    from_rounded = flexi_patch_embed.resample_kernel(embed.proj.weight.float(), embed.pinv_for(16, "cpu"), 16)
    assert torch.equal(half, from_rounded.to(torch.bfloat16))
    assert torch.allclose(half.float(), fp32, rtol=2e-2, atol=2e-2 * float(fp32.detach().abs().max()))
    assert embed.pinv_for(16, "cpu").dtype == torch.float32


def test_pinv_is_computed_once_per_patch_size(monkeypatch):
    calls = []
    real = flexi_patch_embed.pinv_resize_matrix
    monkeypatch.setattr(flexi_patch_embed, "pinv_resize_matrix", lambda *a: calls.append(a) or real(*a))
    embed = FlexiPatchEmbed(img_size=32, patch_size=4, in_chans=3, embed_dim=6)
    x = torch.randn(2, 3, 32, 32)
    first = embed(x, patch_size=8)
    for _ in range(4):
        assert torch.equal(embed(x, patch_size=8), first)
    embed(x, patch_size=16)
    embed(x, patch_size=16)
    embed(x, patch_size=4)  # the base patch needs no resampling
    assert calls == [(4, 8), (4, 16)]


def test_pinv_matches_the_flexivit_definition():
    """pinv(R) as FlexiViT defines it: R resizes each one-hot basis patch; the matrix maps a
    flattened kernel to the kernel that gives every resized patch the same response."""
    R = flexi_patch_embed.resize_matrix(4, 8)
    assert R.shape == (64, 16)
    x = torch.randn(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    up = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(R @ x.reshape(-1), up.reshape(-1))
    w = torch.randn(16, dtype=torch.float64)
    w_new = w @ flexi_patch_embed.pinv_resize_matrix(4, 8).double()
    assert torch.allclose((R @ x.reshape(-1)) @ w_new, x.reshape(-1) @ w, atol=1e-5)

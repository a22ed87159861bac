"""JPEG draft (DCT-scaled) decoding in `decode_image`: PNGs and small JPEGs bit-identical, large JPEGs
within a pixel bound of the full-size decode, and never decoded below the model's input size."""
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jest_ds.data import shards
from jest_ds.data.shards import SkipCounter, decode_image, draft_jpeg, iter_raw_samples, resolve_urls
from jest_ds.tools.bench_scale import render_jpeg

from synthetic_data import COLOURS, SHAPES, draw

POOL = Path(__file__).resolve().parents[1] / "data" / "embedded" / "pool"

# The bound (uint8 levels, over a set of images): draft vs full-size decode, then the same
# `prepare_image`. Measured on 2026-12-05 with the embedded renders (docs/benchmarks.md "Scale on CPU"):
# mean <= 1.8, max <= 35; the bound leaves headroom for other libjpeg builds.
MAX_MEAN_DIFF = 2.5
MAX_PIXEL_DIFF = 48


def source_pngs(n: int = 32) -> list[bytes]:
    """The embedded pool's first renders where the dataset is built, else synthetic shapes."""
    if POOL.is_dir():
        out = [s["png"] for _, s in zip(range(n), iter_raw_samples(resolve_urls(str(POOL)), SkipCounter(quiet=True)))]
        if len(out) == n:
            return out
    rng = random.Random(0)
    return [draw(rng.choice(list(COLOURS)), rng.choice(SHAPES), 64, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def pngs():
    return source_pngs()


def jpeg(a: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("size", [8, 64, 224])
def test_png_path_is_bit_identical(pngs, size):
    for png in pngs[:8]:
        assert np.array_equal(decode_image(png, size, jpeg_draft=True), decode_image(png, size, jpeg_draft=False))
    big = io.BytesIO()  # a large PNG is never drafted either
    Image.open(io.BytesIO(pngs[0])).convert("RGB").resize((512, 512)).save(big, format="PNG")
    assert np.array_equal(decode_image(big.getvalue(), 64, jpeg_draft=True),
                          decode_image(big.getvalue(), 64, jpeg_draft=False))


def test_small_jpeg_is_bit_identical(pngs):
    """A JPEG under twice the input size decodes at full size: the old pixels exactly."""
    for i in range(4):
        data, _ = render_jpeg(pngs, i, 256, "textured")
        for size in (129, 224, 256, 300):
            assert np.array_equal(decode_image(data, size, jpeg_draft=True), decode_image(data, size, jpeg_draft=False))


@pytest.mark.parametrize("kind", ["upscaled", "textured"])
@pytest.mark.parametrize("file_px,size", [(256, 64), (512, 64), (512, 224), (512, 256), (1024, 224)])
def test_draft_within_bound(pngs, kind, file_px, size):
    diffs = []
    for i in range(4):
        data, _ = render_jpeg(pngs, i, file_px, kind)
        got, want = decode_image(data, size, jpeg_draft=True), decode_image(data, size, jpeg_draft=False)
        assert got.shape == want.shape == (size, size, 3)
        diffs.append(np.abs(got.astype(np.int16) - want.astype(np.int16)))
    assert max(d.max() for d in diffs) <= MAX_PIXEL_DIFF
    assert np.mean([d.mean() for d in diffs]) <= MAX_MEAN_DIFF


def test_default_follows_module_flag(pngs, monkeypatch):
    data, _ = render_jpeg(pngs, 0, 512, "textured")
    monkeypatch.setattr(shards, "JPEG_DRAFT", False)
    assert np.array_equal(decode_image(data, 64), decode_image(data, 64, jpeg_draft=False))
    monkeypatch.setattr(shards, "JPEG_DRAFT", True)
    assert np.array_equal(decode_image(data, 64), decode_image(data, 64, jpeg_draft=True))


@pytest.mark.parametrize("w,h,size", [(512, 512, 224), (449, 449, 224), (447, 447, 224), (1000, 300, 224),
                                      (300, 1000, 64), (513, 257, 64), (2048, 2048, 224), (1031, 17, 64)])
def test_draft_never_below_target(w, h, size):
    rng = np.random.default_rng(w * h)
    data = jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    with Image.open(io.BytesIO(data)) as im:
        scale = draft_jpeg(im, size)
        im.load()
        assert max(im.size) >= size
        if max(w, h) < 2 * size:
            assert scale == 1 and im.size == (w, h)
        else:
            assert scale >= 2 and max(w, h) // scale >= size
    assert decode_image(data, size, jpeg_draft=True).shape == (size, size, 3)  # (noise: no pixel bound)


def test_greyscale_and_cmyk_jpeg_keep_their_conversion(pngs):
    a = np.asarray(Image.open(io.BytesIO(pngs[1])).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC))
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        Image.fromarray(a).convert(mode).save(buf, format="JPEG", quality=95)
        got = decode_image(buf.getvalue(), 64, jpeg_draft=True)
        want = decode_image(buf.getvalue(), 64, jpeg_draft=False)
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= MAX_PIXEL_DIFF


def test_to_tensor_lookup_is_bit_identical_to_the_arithmetic():
    import torch

    from jest_ds.data.shards import MEAN, STD, to_tensor

    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (7, 7)] + [np.arange(256 * 3, dtype=np.uint8)
                                                                                .reshape(16, 16, 3)] * 2
    for group in (arrs[:2], arrs[2:]):
        want = torch.from_numpy(np.stack(group)).permute(0, 3, 1, 2).float().div_(255.0).sub_(MEAN).div_(STD).contiguous()
        got = to_tensor(group)
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, want)

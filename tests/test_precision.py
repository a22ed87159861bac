"""Mixed precision through every path a run takes: training step, scoring pass, reference
(forward mode), Flexi-JEST's two resolutions and in-training evaluation, under ZeRO 0/2/3.

On CPU torch runs bf16, so the bf16 path is exercised here, not only on a GPU. (Before the fix,
bf16 died at the first forward: the engine cast the weights and nothing cast the inputs.)
"""
import math

import pytest
import torch

from synthetic_data import tiny_config
from jest_ds.config import config_from_dict, deepspeed_config
from jest_ds.models import DualEncoder
from jest_ds.train.metrics import read_metrics
from jest_ds.train.trainer import train


@pytest.fixture(scope="module")
def bf16_cache(synthetic_root, short_reference, tmp_path_factory):
    """The reference's pool embeddings, computed in bf16 (as `jest-ds cache-ref --precision bf16`)."""
    from jest_ds.reference.build import build_cache
    from jest_ds.data.tokenizer import CaptionTokenizer

    out = tmp_path_factory.mktemp("cache_bf16") / "cache"
    build_cache(short_reference, synthetic_root / "pool", out,
                CaptionTokenizer.from_file(synthetic_root / "tokenizer.json"), precision="bf16", progress=False)
    return out


def test_bf16_model_accepts_float32_inputs_and_tracks_fp32():
    from synthetic_data import TINY_MODEL
    from jest_ds.config import ModelConfig

    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**TINY_MODEL, vocab_size=64)).eval()
    images = torch.randn(6, 3, 16, 16)
    tokens = torch.randint(1, 64, (6, 8))
    with torch.no_grad():
        coarse = torch.tensor([True, False, True, False, False, True])
        ref = model(images, tokens, coarse=coarse)
        half = model.to(torch.bfloat16)(images, tokens, coarse=coarse)
    assert half.img.dtype == torch.bfloat16 and half.txt.dtype == torch.bfloat16
    # unit vectors: bf16 keeps ~3 significant digits
    assert (half.img.float() - ref.img).abs().max() < 0.05
    assert (half.txt.float() - ref.txt).abs().max() < 0.05


@pytest.mark.parametrize("precision,expected", [("bf16", (True, False)), ("fp16", (False, True)),
                                                ("fp32", (False, False))])
def test_ds_config_precision_keys(synthetic_root, tmp_path, precision, expected):
    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, train={"precision": precision}))
    ds = deepspeed_config(cfg, 1)
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == expected


RUNS = {
    "iid_zero0": ({"method": "iid"}, 0),
    "iid_zero2": ({"method": "iid"}, 2),
    "iid_zero3": ({"method": "iid"}, 3),
    "jest_cached_zero0": ({"method": "jest", "reference_mode": "cached"}, 0),
    "jest_cached_zero2": ({"method": "jest", "reference_mode": "cached"}, 2),
    "jest_cached_zero3": ({"method": "jest", "reference_mode": "cached"}, 3),
    "jest_forward_zero0": ({"method": "jest", "reference_mode": "forward"}, 0),
    "jest_forward_zero2": ({"method": "jest", "reference_mode": "forward"}, 2),
    "jest_forward_zero3": ({"method": "jest", "reference_mode": "forward"}, 3),
    "flexi_zero0": ({"method": "jest", "reference_mode": "cached", "flexi": True}, 0),
    "flexi_zero2": ({"method": "jest", "reference_mode": "forward", "flexi": True}, 2),
    "flexi_zero3": ({"method": "jest", "reference_mode": "forward", "flexi": True}, 3),
    "fp16_jest_forward_zero2": ({"method": "jest", "reference_mode": "forward"}, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_half_precision_step_scores_trains_and_evaluates(synthetic_root, short_reference, bf16_cache, tmp_path,
                                                         name):
    selection, zero = RUNS[name]
    if selection["method"] != "iid":
        selection = {**selection, "reference": str(short_reference), "filter_ratio": 0.75, "n_chunks": 4,
                     "gain": 10.0}
    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, selection=selection,
                                       data={"reference_cache": str(bf16_cache)},
                                       train={"steps": 2, "eval_every": 2,
                                              "precision": "fp16" if name.startswith("fp16") else "bf16",
                                              "zero_stage": zero}))
    final = train(cfg, show_progress=False)
    rows = read_metrics(tmp_path)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert rows[-1]["nonfinite_steps"] == 0
    assert math.isfinite(final["eval/score"])  # the in-training evaluation ran on the bf16 model
    if selection["method"] != "iid":
        assert rows[-1]["flops/scoring"] > 0

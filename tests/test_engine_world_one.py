"""At world size 1 and ZeRO-0 the engine skips its gradient all-reduce (the identity on one rank):
the same weights, bit for bit, as an engine that runs it."""
import dataclasses

import pytest
import torch

from synthetic_data import TINY_MODEL, tiny_config
from jest_ds.config import config_from_dict
from jest_ds.losses import sigmoid_loss_dense
from jest_ds.models import DualEncoder
from jest_ds.train.distributed import init_distributed
from jest_ds.train.engine import build_engine


def _cfg(tmp_path, stage):
    return config_from_dict(tiny_config(tmp_path, tmp_path / "run", model={"vocab_size": 50},
                                        train={"zero_stage": stage, "batch_size": 16}))


@pytest.mark.parametrize("stage", [0, 2])
def test_one_rank_skips_only_the_zero0_allreduce_and_trains_identically(tmp_path, stage):
    init_distributed(60.0)
    cfg = _cfg(tmp_path, stage)
    torch.manual_seed(0)
    start = DualEncoder(cfg.model).state_dict()

    def fresh():
        net = DualEncoder(cfg.model)
        net.load_state_dict(start)
        return net

    skipping = build_engine(cfg, fresh(), 1)
    assert skipping.enable_backward_allreduce == (stage != 0)
    if stage != 0:
        return  # ZeRO-1/2/3 reduce inside their optimizer: nothing is switched off
    reducing = build_engine(cfg, fresh(), 1)
    reducing.enable_backward_allreduce = True
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        images = torch.randn(16, 3, cfg.model.image_size, cfg.model.image_size, generator=g)
        tokens = torch.randint(1, 50, (16, cfg.model.context_length), generator=g)
        for engine in (skipping, reducing):
            e = engine(images, tokens)
            engine.backward(sigmoid_loss_dense(e.img, e.txt, e.log_scale, e.bias))
            engine.step()
    for (name, a), b in zip(skipping.module.state_dict().items(), reducing.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(skipping.module.state_dict()["bias"], start["bias"])  # it trained

"""What the trainer logs besides the loss (gradient norm, SigLIP scale/bias of learner and reference,
throughput, data wait, MFU, peak memory), and the skip of a step whose gradient norm is not finite."""
import glob
import math

import pytest
import torch
import yaml

from synthetic_data import tiny_config
from jest_ds.cli import main
from jest_ds.config import config_from_dict
from jest_ds.losses import global_sigmoid_loss
from jest_ds.models import DualEncoder
from jest_ds.models.export import load_exported
from jest_ds.train.export import gather_state_dict
from jest_ds.train.grad_norm import dense_grad_norm
from jest_ds.train.metrics import ThroughputMeter, read_metrics
from jest_ds.train.trainer import NonFiniteLossError, Trainer, train


def test_dense_grad_norm_by_hand():
    a, b, c = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True), torch.zeros(1)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])
    assert dense_grad_norm([a, b, c]) == 13.0  # c has no gradient: counts as zero
    b.grad[0] = float("inf")
    assert dense_grad_norm([a, b]) == float("inf")
    b.grad[0] = float("nan")
    assert math.isnan(dense_grad_norm([a, b]))


def test_throughput_meter_rates_over_the_interval():
    meter = ThroughputMeter(trained_per_step=32, candidates_per_step=128, flops_per_step=2e9,
                            peak_flops_per_device=1e10, world_size=2)
    assert meter.as_metrics() == {}
    meter.add(step_s=0.5, data_s=0.1)
    meter.add(step_s=1.5, data_s=0.3)
    m = meter.as_metrics()
    assert m["perf/samples_per_s"] == pytest.approx(64 / 2.0)
    assert m["perf/candidates_per_s"] == pytest.approx(256 / 2.0)
    assert m["perf/data_wait_pct"] == pytest.approx(20.0)
    assert m["perf/mfu"] == pytest.approx(2 * 2e9 / 2.0 / 2e10)
    assert meter.as_metrics() == {}  # a new interval
    unknown_peak = ThroughputMeter(1, 1, 1.0, peak_flops_per_device=None, world_size=1)
    unknown_peak.add(step_s=1.0, data_s=0.0)
    assert "perf/mfu" not in unknown_peak.as_metrics()


@pytest.mark.slow
def test_a_tiny_jest_run_logs_observability_metrics(synthetic_root, tmp_path):
    ref_dir = tmp_path / "reference"
    train(config_from_dict(tiny_config(synthetic_root, ref_dir, train={"steps": 2, "eval_every": 0})),
          show_progress=False)
    reference = load_exported(ref_dir / "export")[0]
    run = tmp_path / "jest"
    cfg = tiny_config(synthetic_root, run, train={"steps": 4, "eval_every": 0, "log_every": 2, "tensorboard": True},
                      selection={"method": "jest", "reference": str(ref_dir / "export"),
                                 "reference_mode": "forward", "filter_ratio": 0.5, "n_chunks": 2})
    (tmp_path / "jest.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "jest.yaml"), "--quiet", "--no-export",
                 "--peak-flops", "1e12"]) == 0
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert 0 < r["grad_norm"] < 1e4
        assert r["learner/scale"] == pytest.approx(10.0, rel=0.2)  # init t' = log 10, a few small steps
        assert -15 < r["learner/bias"] < 0
        assert r["reference/scale"] == pytest.approx(float(reference.log_scale.exp()), rel=1e-6)
        assert r["reference/bias"] == pytest.approx(float(reference.bias), rel=1e-6)
        assert r["perf/samples_per_s"] > 0
        assert r["perf/candidates_per_s"] == pytest.approx(2 * r["perf/samples_per_s"])  # f = 0.5: B = 2b
        assert 0 <= r["perf/data_wait_pct"] <= 100
        assert 0 < r["perf/mfu"] < 1  # a 2-core CPU against a 1 TFLOP/s peak
        assert r["mem/peak_rss_mib"] > 100  # torch alone is more
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(run / "tensorboard" / "events.*"))
    tags = EventAccumulator(events).Reload().Tags()["scalars"]
    assert {"grad_norm", "perf/samples_per_s", "perf/mfu", "reference/scale"} <= set(tags)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 2, 3])
def test_grad_norm_is_the_dense_norm_and_a_nonfinite_one_skips_the_step(synthetic_root, tmp_path, zero):
    cfg = config_from_dict(tiny_config(synthetic_root, tmp_path, train={
        "steps": 10, "zero_stage": zero, "eval_every": 0, "max_nonfinite_in_row": 2}))
    trainer = Trainer(cfg, show_progress=False)
    try:
        batches = trainer.batch_generator()
        state0 = gather_state_dict(trainer.engine)

        # step 1: the logged norm is the dense norm of the same step in plain torch (before clipping)
        batch = next(batches)
        record = trainer.train_step(batch)
        dense = DualEncoder(cfg.model)
        dense.load_state_dict(state0)
        enc = dense(batch.images[: trainer.b_local], batch.tokens[: trainer.b_local])  # IID trains the first b
        global_sigmoid_loss(enc.img, enc.txt, enc.log_scale, enc.bias)[0].backward()
        assert record["grad_norm"] == pytest.approx(dense_grad_norm(dense.parameters()), rel=1e-4)
        assert record["grad_norm"] > cfg.optim.grad_clip  # so the norm is not the clipped one

        # step 2: an inf in one gradient: no update, counted
        param = dict(trainer.engine.module.named_parameters())["log_scale"]
        before = gather_state_dict(trainer.engine)
        hook = param.register_hook(lambda g: g * float("inf"))
        record = trainer.train_step(next(batches))
        hook.remove()
        after = gather_state_dict(trainer.engine)
        assert record["grad_norm"] == float("inf") and record["nonfinite_steps"] == 1
        assert all(torch.equal(before[k], after[k]) for k in before)

        # step 3: training goes on with clean gradients (nothing of the skipped step is left behind)
        record = trainer.train_step(next(batches))
        assert math.isfinite(record["grad_norm"]) and trainer.nonfinite_in_row == 0
        assert not torch.equal(after["log_scale"], gather_state_dict(trainer.engine)["log_scale"])

        # max_nonfinite_in_row = 2 non-finite norms in a row abort with a clear error
        param.register_hook(lambda g: g * float("nan"))
        trainer.train_step(next(batches))
        with pytest.raises(NonFiniteLossError, match="gradient norm was non-finite for 2 steps in a row"):
            trainer.train_step(next(batches))
    finally:
        trainer.close()

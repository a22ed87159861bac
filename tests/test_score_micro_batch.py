"""The scoring pass in micro-batches (`selection.score_micro_batch`): the same embeddings as one
forward over the super-batch, and the same selection, in the trainer and the reference forward."""
import pytest
import torch

from synthetic_data import TINY_MODEL, tiny_config
from jest_ds.config import ModelConfig, config_from_dict
from jest_ds.models import DualEncoder, encode_in_micro_batches
from jest_ds.selection import Embeddings, joint_sample
from jest_ds.train.trainer import Trainer


def _model_and_batch(n=96, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY_MODEL, "vocab_size": 50})
    model = DualEncoder(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g)
    lengths = torch.randint(1, cfg.context_length + 1, (n,), generator=g)
    tokens = torch.randint(1, 50, (n, cfg.context_length), generator=g)
    tokens[torch.arange(cfg.context_length)[None, :] >= lengths[:, None]] = 0  # padded captions, as the tokenizer's
    return cfg, model, images, tokens


@pytest.mark.parametrize("micro_batch", [1, 7, 32, 95])
@pytest.mark.parametrize("coarse", [False, True])
def test_micro_batches_give_the_embeddings_of_one_call(micro_batch, coarse):
    cfg, model, images, tokens = _model_and_batch()
    kw = {"patch_size": cfg.coarse_patch_size} if coarse else {}
    with torch.no_grad():
        whole = model(images, tokens, **kw)
        parts = encode_in_micro_batches(model, images, tokens, micro_batch, **kw)
    assert parts.img.shape == whole.img.shape and parts.txt.shape == whole.txt.shape
    torch.testing.assert_close(parts.img, whole.img, rtol=0, atol=2e-6)
    torch.testing.assert_close(parts.txt, whole.txt, rtol=0, atol=2e-6)
    assert torch.equal(parts.log_scale, whole.log_scale) and torch.equal(parts.bias, whole.bias)


def test_zero_or_a_covering_micro_batch_is_one_call():
    _, model, images, tokens = _model_and_batch(n=10)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for mb in (0, 10, 64):
            encode_in_micro_batches(model, images, tokens, mb)
        assert len(calls) == 3
        encode_in_micro_batches(model, images, tokens, 3)
    assert len(calls) == 3 + 4  # 3 + 3 + 3 + 1 rows


@pytest.mark.parametrize("seed", range(8))
def test_the_sampler_picks_the_same_batch_from_micro_batched_scores(seed):
    """The selection's exactness contract: keys tying within ~1e-6 may swap; on random learners
    and references the micro-batched scoring pass picks exactly the batch of one forward."""
    cfg, model, images, tokens = _model_and_batch(n=128, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    ref = Embeddings(torch.nn.functional.normalize(torch.randn(128, cfg.embed_dim, generator=g), dim=-1),
                     torch.nn.functional.normalize(torch.randn(128, cfg.embed_dim, generator=g), dim=-1),
                     torch.tensor([2.0]), torch.tensor([-3.0]))
    picks = []
    with torch.no_grad():
        for mb in (0, 32):
            e = encode_in_micro_batches(model, images, tokens, mb)
            learner = Embeddings(e.img, e.txt, e.log_scale, e.bias)
            picks.append(joint_sample(learner, ref, 32, n_chunks=4, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(picks[0], picks[1])


@pytest.mark.slow
@pytest.mark.parametrize("reference_mode", ["cached", "forward"])
def test_trainer_scores_in_micro_batches_of_its_training_batch(synthetic_root, short_reference, tmp_path,
                                                               reference_mode):
    """By default the trainer's learner (and an uncached reference) encode the super-batch in
    slices of the per-rank training batch; `score_micro_batch` = B gives one call and the same scores."""
    from jest_ds.reference.build import build_cache
    from jest_ds.data.tokenizer import CaptionTokenizer

    extra = {}
    if reference_mode == "cached":
        cache = tmp_path / "cache"
        build_cache(short_reference, synthetic_root / "pool", cache,
                    CaptionTokenizer.from_file(synthetic_root / "tokenizer.json"), progress=False)
        extra = {"data": {"root": str(synthetic_root), "train_part": "pool", "shuffle_buffer": 64,
                          "reference_cache": str(cache)}}
    results = {}
    for mb in (0, 64):  # B = 16 / (1 - 0.75) = 64
        cfg = config_from_dict(tiny_config(
            synthetic_root, tmp_path / f"run_{mb}", selection={
                "method": "jest", "filter_ratio": 0.75, "n_chunks": 4, "reference": str(short_reference),
                "reference_mode": reference_mode, "score_micro_batch": mb},
            train={"seed": 3, "batch_size": 16, "eval_every": 0}, **extra))
        trainer = Trainer(cfg, show_progress=False)
        try:
            assert trainer.score_micro_batch == (16 if mb == 0 else 64)
            calls = []
            hooks = [trainer.engine.module.register_forward_hook(lambda *a: calls.append("learner"))]
            if reference_mode == "forward":
                assert trainer.reference.micro_batch == trainer.score_micro_batch
                hooks.append(trainer.reference.model.register_forward_hook(lambda *a: calls.append("reference")))
            batches = trainer.batch_generator()
            batch = next(batches)
            batches.close()  # ends the loader's worker processes now, not at garbage collection
            # a cached reference's rows come with the batch from the loader, not from a lookup in the step
            assert (batch.reference is not None) == (reference_mode == "cached")
            learner, reference = trainer.score(batch)
            chosen = trainer.select(learner, reference)
            for h in hooks:
                h.remove()
            per_model = 64 // trainer.score_micro_batch
            assert calls.count("learner") == per_model
            assert calls.count("reference") == (per_model if reference_mode == "forward" else 0)
            results[mb] = (batch.keys, learner, reference, [batch.keys[i] for i in chosen.tolist()])
        finally:
            trainer.close()
    (keys0, l0, r0, chosen0), (keys1, l1, r1, chosen1) = results[0], results[64]
    assert keys0 == keys1  # same seed, same super-batch
    torch.testing.assert_close(l0.img, l1.img, rtol=0, atol=2e-6)
    torch.testing.assert_close(l0.txt, l1.txt, rtol=0, atol=2e-6)
    torch.testing.assert_close(r0.img, r1.img, rtol=0, atol=2e-6)
    assert chosen0 == chosen1

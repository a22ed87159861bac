"""The held-out validation loss (jest_ds/eval/validation.py) against the training loss's dense form."""
import math

import pytest
import torch
import torch.nn.functional as F

from jest_ds.eval.validation import sigmoid_pair_loss_sums, validation_loss
from jest_ds.losses import sigmoid_loss_dense


def _pairs(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)  # pair i is related
    return img, txt


@pytest.mark.parametrize("chunk", [1, 7, 50, 4096])
def test_chunked_loss_is_the_dense_training_loss_per_pair(chunk):
    img, txt = _pairs(50)
    t, b = torch.tensor([math.log(10.0)]), torch.tensor([-5.0])
    out = validation_loss(img, txt, t, b, chunk_rows=chunk)
    dense = float(sigmoid_loss_dense(img.double(), txt.double(), t.double(), b.double()))
    assert out["val_loss"] == pytest.approx(dense / 50, rel=1e-12)
    logits = float(t.double().exp()) * img.double() @ txt.double().T - 5.0
    nll = F.softplus(-torch.where(torch.eye(50, dtype=torch.bool), logits, -logits))
    assert out["val_loss_pos"] == pytest.approx(float(nll.diagonal().mean()), rel=1e-12)
    off = nll[~torch.eye(50, dtype=torch.bool)]
    assert out["val_loss_neg"] == pytest.approx(float(off.mean()), rel=1e-12)


def test_known_answer_and_5000_pairs():
    # every embedding the same unit vector: every logit is exp(t') + b = 10 - 5 = 5
    n = 5000
    same = torch.full((n, 4), 0.5, dtype=torch.float64)
    out = validation_loss(same, same, torch.tensor([math.log(10.0)], dtype=torch.float64), torch.tensor([-5.0]))
    pos, neg = math.log1p(math.exp(-5.0)), math.log1p(math.exp(5.0))
    assert out["val_loss_pos"] == pytest.approx(pos, rel=1e-12)
    assert out["val_loss_neg"] == pytest.approx(neg, rel=1e-12)
    assert out["val_loss"] == pytest.approx((pos + (n - 1) * neg) / n, rel=1e-12)
    # a related set: the per-pair value does not grow with n the way the training-style loss does
    img, txt = _pairs(n, seed=1)
    t, b = torch.tensor([math.log(10.0)]), torch.tensor([-5.0])
    big = validation_loss(img, txt, t, b)
    small = validation_loss(img[:500], txt[:500], t, b)
    assert big["val_loss"] == pytest.approx(small["val_loss"], rel=0.05)
    assert big["val_loss"] * n > 5 * small["val_loss"] * 500


@pytest.mark.parametrize("b", [2, 3, 4])
def test_val_loss_batch_is_the_mean_training_loss_over_every_batch(b):
    # oracle: the training loss (dense form) of EVERY b-subset of 7 held-out pairs, averaged
    import itertools

    img, txt = _pairs(7, seed=2)
    t, bias = torch.tensor([math.log(10.0)]), torch.tensor([-3.0])
    losses = [float(sigmoid_loss_dense(img[list(c)].double(), txt[list(c)].double(), t.double(), bias.double()))
              for c in itertools.combinations(range(7), b)]
    out = validation_loss(img, txt, t, bias, batch_size=b, chunk_rows=3)
    assert out["val_loss_batch"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert "val_loss_batch" not in validation_loss(img, txt, t, bias)
    with pytest.raises(ValueError, match="needs 1 < b <= n = 7"):
        validation_loss(img, txt, t, bias, batch_size=8)


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="must be \\[n, d\\] alike"):
        sigmoid_pair_loss_sums(torch.zeros(4, 3), torch.zeros(5, 3), 0.0, 0.0)


@pytest.mark.slow
def test_evaluate_logs_val_loss_for_retrieval_sets_only(synthetic_root):
    from synthetic_data import TINY_MODEL
    from jest_ds.config import ModelConfig
    from jest_ds.data.eval_sets import list_eval_sets, load_eval_set
    from jest_ds.data.tokenizer import CaptionTokenizer
    from jest_ds.eval import evaluate
    from jest_ds.eval.encode import encode_images, encode_texts
    from jest_ds.models import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**TINY_MODEL, vocab_size=64))
    tok = CaptionTokenizer.from_file(synthetic_root / "tokenizer.json")
    sets = [load_eval_set(d, 16) for d in list_eval_sets(synthetic_root)]
    metrics = evaluate(model, sets, tok, 8, torch.device("cpu"), batch_size=32, few_shot=0, loss_batch_size=4)
    assert "eval/shapes_retrieval/val_loss" in metrics and "eval/colours/val_loss" not in metrics
    m = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("eval/shapes_retrieval/")}
    assert m["val_loss_batch"] == pytest.approx(m["val_loss_pos"] + 3 * m["val_loss_neg"], rel=1e-12)
    rt = next(s for s in sets if s.task == "retrieval")
    img = encode_images(model, rt.images, 32, "cpu")
    txt = encode_texts(model, tok.encode_batch(list(rt.captions), 8), 32, "cpu")
    expected = float(sigmoid_loss_dense(img, txt, model.log_scale.detach(), model.bias.detach())) / len(rt)
    assert metrics["eval/shapes_retrieval/val_loss"] == pytest.approx(expected, rel=1e-5)

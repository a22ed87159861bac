import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synthetic_data import TINY_MODEL
from jest_ds.config import ModelConfig
from jest_ds.data.eval_sets import (DEFAULT_TEMPLATES, check_template, load_eval_set, resolve_eval_sets,
                                    write_eval_set)
from jest_ds.data.shards import MEAN, STD, write_tar
from jest_ds.data.tokenizer import train_tokenizer
from jest_ds.eval import evaluate_set
from jest_ds.eval.linear_probe import few_shot_accuracy, split_shots
from jest_ds.eval.retrieval import recall_at_k, retrieval_metrics
from jest_ds.eval.zeroshot import class_embeddings, prompts, topk_accuracy
from jest_ds.models import DualEncoder


def test_zero_shot_topk_by_hand():
    cls = torch.eye(3)
    img = torch.tensor([[1.0, 0, 0], [0, 0.9, 0.1], [0.6, 0, 0.4]])
    labels = torch.tensor([0, 1, 2])
    acc = topk_accuracy(img, cls, labels, ks=(1, 2))
    assert abs(acc["top1"] - 2 / 3) < 1e-6 and acc["top2"] == 1.0


def test_class_embeddings_average_templates_class_major():
    assert prompts(["cat", "dog"], ["a {}", "the {}"]) == ["a cat", "the cat", "a dog", "the dog"]
    txt = torch.tensor([[1.0, 0], [1.0, 0.2], [0, 1.0], [0.1, 1.0]])
    emb = class_embeddings(txt, 2, 2)
    assert emb.shape == (2, 2) and emb[0, 0] > emb[0, 1] and emb[1, 1] > emb[1, 0]
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_retrieval_recall_by_hand_and_ties_are_conservative():
    q = torch.eye(4)
    g = torch.eye(4)[[0, 1, 3, 2]]  # items 2 and 3 swapped
    r = recall_at_k(q, g, ks=(1, 2))
    assert r["R@1"] == 0.5
    tied = recall_at_k(torch.ones(3, 2), torch.ones(3, 2), ks=(1,))
    assert tied["R@1"] == 0.0  # all tie: nobody is ranked first for sure
    m = retrieval_metrics(q, q)
    assert m["i2t_R@1"] == m["t2i_R@1"] == 1.0


def test_few_shot_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 16, generator=g), dim=1) * 3
    labels = torch.arange(5).repeat_interleave(30)
    x = centres[labels] + 0.3 * torch.randn(150, 16, generator=g)
    assert few_shot_accuracy(x, labels, shots=10) > 0.95
    noise = torch.randn(150, 16, generator=g)
    assert few_shot_accuracy(noise, labels, shots=10) < 0.5
    train, test = split_shots(labels, 10)
    assert len(train) == 50 and len(set(train.tolist()) & set(test.tolist())) == 0


# ----------------------------------------------------------------- evaluation sets users bring
def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def colour_samples(n: int, n_classes: int):
    return [{"image": png(Image.new("RGB", (8, 8), (40 * (i % n_classes), 0, 0))), "ext": "png",
             "caption": f"shade {i % n_classes}", "label": i % n_classes} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialised tiny dual encoder (16 px) and a tokenizer for the prompts used here."""
    tok = train_tokenizer(["a photo of dark mid light shade 0 1 2 a b c"], vocab_size=64, min_frequency=1)
    torch.manual_seed(0)
    return DualEncoder(ModelConfig(**TINY_MODEL, vocab_size=tok.vocab_size)).eval(), tok


def test_topk_with_fewer_classes_than_k_reports_what_exists():
    img = torch.eye(3)
    acc = topk_accuracy(img, torch.eye(3), torch.tensor([0, 1, 2]))  # ks = (1, 5), 3 classes
    assert acc == {"top1": 1.0}


def test_zero_shot_set_of_three_classes_without_templates_evaluates(tmp_path, tiny_model):
    d = tmp_path / "mine" / "shades"
    write_eval_set(d, "zeroshot", colour_samples(9, 3), classes=["dark", "mid", "light"])
    es = load_eval_set(d, 16)
    assert es.templates == list(DEFAULT_TEMPLATES) == ["a photo of {}."]
    model, tok = tiny_model
    out = evaluate_set(model, es, tok, 8, torch.device("cpu"), few_shot=0)
    assert "top1" in out and "top5" not in out and "chance_top5" not in out
    assert out["chance_top1"] == pytest.approx(1 / 3) and out["skipped"] == 0


@pytest.mark.parametrize("template,message", [
    ("a photo", "must contain exactly one {} for the class name, found 0"),
    ("a {} and a {}", "must contain exactly one {} for the class name, found 2"),
    ("a {x} photo", "has a named field {x}; use {} for the class name"),
    ("a {0} photo", "has a named field {0}"),
    ("a {photo", "is not a format string"),
    (7, "must be a string"),
])
def test_bad_template_is_one_line_naming_set_and_template(tmp_path, template, message):
    with pytest.raises(ValueError) as err:
        check_template(template, "eval set 'x'")
    assert message in str(err.value) and repr(template) in str(err.value)
    d = tmp_path / "bad_set"
    write_eval_set(d, "zeroshot", colour_samples(3, 3), classes=["a", "b", "c"])
    spec = json.loads((d / "eval.json").read_text())
    (d / "eval.json").write_text(json.dumps({**spec, "templates": ["a {}.", template]}))
    with pytest.raises(ValueError) as err:
        load_eval_set(d, 8)
    msg = str(err.value)
    assert "\n" not in msg and "'bad_set'" in msg and repr(template) in msg and message in msg
    assert check_template("{{braces}} around {}", "x") == "{{braces}} around {}"  # literal braces are fine


def test_skipped_samples_are_counted_in_the_set_and_its_results(tmp_path, tiny_model):
    d = tmp_path / "shades"
    samples = colour_samples(6, 3)
    samples[1] = {**samples[1], "image": b"\x89PNG not really"}  # corrupt image
    write_eval_set(d, "zeroshot", samples, classes=["a", "b", "c"], templates=["{}"])
    # a sample whose json lost its label (written by hand, as a foreign tool might)
    write_tar(d / "shades-000001.tar", [("nolabel", {"png": samples[0]["image"], "txt": b"x",
                                                     "json": b"{}"})])
    es = load_eval_set(d, 16)
    assert len(es) == 5
    assert es.skipped == {"missing_label": 1, "undecodable_image": 1}
    model, tok = tiny_model
    assert evaluate_set(model, es, tok, 8, torch.device("cpu"), few_shot=0)["skipped"] == 2


def test_sixteen_bit_grey_png_decodes_to_its_8_bit_values(tmp_path):
    values = np.array([[0, 16448, 32896, 65535]] * 4, dtype=np.uint16)  # 0, 64, 128, 255 in 8 bits
    im = Image.fromarray(values)  # mode I;16
    assert im.mode == "I;16"
    d = tmp_path / "grey16"
    write_eval_set(d, "retrieval", [{"image": png(im), "ext": "png", "caption": "grey"}])
    es = load_eval_set(d, 4)
    expected = (torch.tensor([0, 64, 128, 255], dtype=torch.float32) / 255 - MEAN) / STD
    assert es.skipped == {}
    for c in range(3):  # grey: every channel the same
        for row in range(4):
            assert torch.allclose(es.images[0, c, row], expected, atol=1e-6)


def test_non_square_rgba_is_composited_on_white_and_padded_centred(tmp_path):
    im = Image.new("RGBA", (8, 4), (255, 0, 0, 255))  # opaque red, 8 wide, 4 high
    im.putpixel((0, 0), (0, 0, 255, 0))  # one fully transparent pixel: white after compositing
    d = tmp_path / "wide"
    write_eval_set(d, "retrieval", [{"image": png(im), "ext": "png", "caption": "a red bar"}])
    es = load_eval_set(d, 8)  # 8x4 padded to 8x8 (no resize): rows 0-1 and 6-7 white
    pixels = ((es.images[0] * STD + MEAN) * 255).round().to(torch.uint8).permute(1, 2, 0)
    white, red = torch.tensor([255, 255, 255], dtype=torch.uint8), torch.tensor([255, 0, 0], dtype=torch.uint8)
    for row in (0, 1, 6, 7):
        assert (pixels[row] == white).all()
    assert (pixels[2, 0] == white).all()  # the transparent pixel, moved down by the padding
    assert (pixels[2, 1:] == red).all() and (pixels[3:6] == red).all()


def test_resolve_eval_sets_names_and_directories(tmp_path):
    root = tmp_path / "data"
    write_eval_set(root / "eval" / "shades", "zeroshot", colour_samples(3, 3), classes=["a", "b", "c"])
    outside = tmp_path / "elsewhere" / "mine"
    write_eval_set(outside, "retrieval", colour_samples(3, 3))
    assert resolve_eval_sets([], root) == [root / "eval" / "shades"]
    assert resolve_eval_sets(["shades", str(outside)], root) == [root / "eval" / "shades", outside]
    assert resolve_eval_sets([str(outside)], None) == [outside]
    with pytest.raises(FileNotFoundError, match=r"eval set 'nope': not a set directory .*\(there: shades\)"):
        resolve_eval_sets(["nope"], root)
    with pytest.raises(FileNotFoundError, match="eval set 'shades'.*no data root"):
        resolve_eval_sets(["shades"], None)

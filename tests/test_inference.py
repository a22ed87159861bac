"""Inference on an export: create_model_and_transforms, tokenizer, preprocess, Hugging Face interop, bf16."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import jest_ds
from synthetic_data import TINY_MODEL
from jest_ds.config import config_from_dict
from jest_ds.data.shards import SkipCounter, decode_image, iter_raw_samples, prepare_image, resolve_urls, to_tensor
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models import DualEncoder
from jest_ds.models.export import HUB_CONFIG, TOKENIZER, export_model
from jest_ds.preprocess import ImagePreprocess

CAPTIONS = ["a red circle", "A Purple   TRIANGLE!", "a blue cross next to a yellow square on a black square", "",
            "déjà vu: a green circle", "zzz qqq 123", "a red circle " * 20]


@pytest.fixture(scope="module")
def export(synthetic_root, tmp_path_factory):
    cfg = config_from_dict({"model": {**TINY_MODEL, "vocab_size": 64}, "data": {"root": str(synthetic_root)}})
    torch.manual_seed(0)
    model = DualEncoder(cfg.model).eval()
    out = tmp_path_factory.mktemp("inference") / "export"
    export_model(model.state_dict(), cfg, out)
    return out, model


@pytest.fixture(scope="module")
def samples(synthetic_root):
    return list(iter_raw_samples(resolve_urls(synthetic_root / "pool"), SkipCounter()))[:12]


def odd_images():
    """Inputs prepare_image treats specially: alpha, palette, 16-bit grey, non-square, large."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 31, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65536, (17, 17), dtype=np.uint16))
    palette = Image.fromarray(rng.integers(0, 256, (40, 12, 3), dtype=np.uint8)).convert("P")
    assert (rgba.mode, grey16.mode) == ("RGBA", "I;16")
    return [rgba, grey16, palette, Image.new("RGB", (64, 48), (10, 200, 30))]


def test_embeddings_equal_the_training_models(export, samples):
    path, trained = export
    model, preprocess, tokenizer = jest_ds.create_model_and_transforms(path, device="cpu")
    images = torch.stack([preprocess(Image.open(io.BytesIO(s["png"]))) for s in samples])
    tokens = tokenizer([s["caption"] for s in samples])
    # the training pipeline's own batch for the same samples
    train_images = to_tensor([decode_image(s["png"], TINY_MODEL["image_size"]) for s in samples])
    train_tokens = CaptionTokenizer.from_file(path / TOKENIZER).encode_batch([s["caption"] for s in samples],
                                                                             TINY_MODEL["context_length"])
    assert torch.equal(images, train_images) and torch.equal(tokens, train_tokens)
    with torch.no_grad():
        ref = trained(train_images, train_tokens)
        img, txt = model.encode_image(images), model.encode_text(tokens)
    assert torch.equal(img, ref.img) and torch.equal(txt, ref.txt)
    assert torch.equal(model.log_scale, trained.log_scale) and torch.equal(model.bias, trained.bias)
    raw = model.encode_image(images, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(samples)))
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), img)


@pytest.mark.parametrize("index", range(4))
def test_preprocess_is_prepare_image_plus_the_spec(export, index):
    path, _ = export
    image = odd_images()[index]
    expected = to_tensor([prepare_image(image, TINY_MODEL["image_size"])])[0]
    got = jest_ds.get_preprocess(path)(image)
    assert got.shape == (3, 16, 16) and got.dtype == torch.float32 and torch.equal(got, expected)


def test_preprocess_spec_round_trips_and_refuses_what_it_cannot_apply(export):
    path, _ = export
    spec = jest_ds.get_preprocess(path)
    assert ImagePreprocess.from_dict(spec.to_dict()) == spec == ImagePreprocess.for_image_size(16)
    with pytest.raises(ValueError, match="resize = 'bilinear'"):
        ImagePreprocess.from_dict({**spec.to_dict(), "resize": "bilinear"})
    with pytest.raises(ValueError, match="std = .*positive"):
        ImagePreprocess.from_dict({**spec.to_dict(), "std": [0.5, 0.0, 0.5]})
    with pytest.raises(TypeError, match="PIL image"):
        spec(np.zeros((16, 16, 3), np.uint8))


def test_tokenizer_matches_transformers(export):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path, _ = export
    ours = jest_ds.get_tokenizer(path)
    ids = ours(CAPTIONS)
    assert ids.dtype == torch.int64 and ids.shape == (len(CAPTIONS), TINY_MODEL["context_length"])
    assert torch.equal(ours(CAPTIONS[0]), ids[:1])
    assert ids[-1, 0] == 2 and ids[-1, -1] == 3  # a long caption keeps [CLS] ... [SEP]
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path / TOKENIZER), pad_token="[PAD]")
    hf = fast(CAPTIONS, padding="max_length", truncation=True, max_length=TINY_MODEL["context_length"],
              return_tensors="pt")["input_ids"]
    assert torch.equal(hf, ids)
    auto = AutoTokenizer.from_pretrained(str(path))  # tokenizer_config.json: special tokens, context length
    assert torch.equal(auto(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"], ids)


def test_save_pretrained_from_pretrained_round_trip(export, samples, tmp_path):
    path, trained = export
    trained.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / HUB_CONFIG).read_bytes() == (path / HUB_CONFIG).read_bytes()
    images = to_tensor([decode_image(s["png"], 16) for s in samples])
    tokens = jest_ds.get_tokenizer(path)([s["caption"] for s in samples])
    for source in (tmp_path / "hf", path):  # a save_pretrained directory, and an export
        loaded = DualEncoder.from_pretrained(source)
        assert loaded.cfg == trained.cfg and not loaded.training
        a, b = loaded.state_dict(), trained.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():
            assert torch.equal(loaded.encode_image(images), trained.encode_image(images))
            assert torch.equal(loaded.encode_text(tokens), trained.encode_text(tokens))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_inference_on_cpu_is_close_to_fp32(export, samples, precision, dtype):
    path, _ = export
    fp32, preprocess, tokenizer = jest_ds.create_model_and_transforms(path, device="cpu")
    half, _, _ = jest_ds.create_model_and_transforms(path, device="cpu", precision=precision)
    images = torch.stack([preprocess(Image.open(io.BytesIO(s["png"]))) for s in samples])
    tokens = tokenizer([s["caption"] for s in samples])
    with torch.no_grad():
        for enc in ("encode_image", "encode_text"):
            x = images if enc == "encode_image" else tokens
            lo, hi = getattr(half, enc)(x), getattr(fp32, enc)(x)
            assert lo.dtype == dtype and hi.dtype == torch.float32
            cos = (lo.float() * hi).sum(-1)
            assert cos.min() > 0.99, (enc, cos)
    with pytest.raises(ValueError, match="precision = 'int8'"):
        jest_ds.create_model_and_transforms(path, precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_inference_matches_cpu(export, samples, precision):
    path, _ = export
    cpu, preprocess, tokenizer = jest_ds.create_model_and_transforms(path, device="cpu")
    gpu, _, _ = jest_ds.create_model_and_transforms(path, device="cuda", precision=precision)
    images = torch.stack([preprocess(Image.open(io.BytesIO(s["png"]))) for s in samples])
    tokens = tokenizer([s["caption"] for s in samples])
    with torch.no_grad():
        for lo, hi in ((gpu.encode_image(images), cpu.encode_image(images)),
                       (gpu.encode_text(tokens), cpu.encode_text(tokens))):
            assert lo.device.type == "cuda"
            assert (lo.float().cpu() * hi).sum(-1).min() > (0.999 if precision == "fp32" else 0.99)

"""`jest-ds export --format open_clip`: a trained tiny model, exported, loaded by open_clip through its
own `local-dir:` loader, tokenizer and preprocessing; its embeddings equal jest-ds's, and zero-shot
and retrieval computed from open_clip's model equal `jest-ds eval` on the same local sets."""
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from jest_ds.cli import main
from jest_ds.data.eval_sets import load_eval_set, read_spec
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models.export import load_exported
from jest_ds.models.open_clip_export import CONFIG, SOURCE, WEIGHTS, open_clip_state_dict

open_clip = pytest.importorskip("open_clip")  # in the `test` extras (setup.cfg)


def raw_samples(set_dir: Path) -> list[dict]:
    """The set's samples straight from its tars (PIL image, caption, json), in tar order."""
    out: dict[str, dict] = {}
    for tar in sorted(set_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                data = tf.extractfile(member).read()
                sample = out.setdefault(key, {"key": key})
                if ext == "png":
                    sample["image"] = Image.open(io.BytesIO(data))
                elif ext == "txt":
                    sample["caption"] = data.decode()
                elif ext == "json":
                    sample["meta"] = json.loads(data)
    return list(out.values())


def recall(query: torch.Tensor, gallery: torch.Tensor, k: int) -> float:
    """Share of queries whose pair (the same row) is among the k most similar gallery items; an item
    scoring exactly as high as the pair ranks before it (the synthetic set repeats captions, so
    identical text embeddings tie; `jest-ds eval` counts ties against the query too)."""
    sims = query @ gallery.T
    rank = (sims >= sims.diagonal()[:, None]).sum(1) - 1
    return (rank < k).float().mean().item()


@pytest.fixture(scope="module")
def open_clip_dir(short_reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("open_clip") / "siglip_tiny"
    assert main(["export", "--format", "open_clip", "--model", str(short_reference), "--out", str(out)]) == 0
    return out


def test_export_writes_an_open_clip_directory_checked_on_export(open_clip_dir, short_reference):
    for name in (CONFIG, WEIGHTS, SOURCE, "tokenizer.json", "tokenizer_config.json", "timm_vision/config.json",
                 "hf_text/config.json"):
        assert (open_clip_dir / name).is_file(), name
    source = json.loads((open_clip_dir / SOURCE).read_text())
    assert source["source_sha256"] == load_exported(short_reference)[2]
    assert max(source["open_clip_check"]["max_abs_diff"].values()) < 1e-5
    cfg = json.loads((open_clip_dir / CONFIG).read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler"
    assert cfg["model_cfg"]["vision_cfg"]["timm_model_name"] == f"local-dir:{open_clip_dir / 'timm_vision'}"


def test_open_clip_loads_it_with_jest_ds_embeddings_tokens_and_pixels(open_clip_dir, short_reference, synthetic_root):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    model.eval()
    jest, cfg, _ = load_exported(short_reference)
    jest_tok = CaptionTokenizer.from_file(short_reference / "tokenizer.json")
    set_dir = synthetic_root / "eval" / "shapes_retrieval"
    samples = raw_samples(set_dir)
    es = load_eval_set(set_dir, cfg.model.image_size)
    assert [s["key"] for s in samples] == es.keys
    pixels = torch.stack([preprocess(s["image"]) for s in samples])
    assert torch.equal(pixels, es.images)  # open_clip's transform = jest-ds's preprocessing (square RGB)
    captions = [s["caption"] for s in samples] + ["A  Red   CIRCLE, with a very long caption that is cut short"]
    tokens = tokenizer(captions)
    assert torch.equal(tokens, jest_tok.encode_batch(captions, cfg.model.context_length))
    with torch.no_grad():
        img_oc, txt_oc = model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)
        img_j, txt_j = jest.encode_image(es.images), jest.encode_text(tokens)
    assert (img_oc - img_j).abs().max() < 1e-5 and (txt_oc - txt_j).abs().max() < 1e-5
    assert model.logit_scale.item() == pytest.approx(jest.log_scale.item(), abs=1e-7)
    assert model.logit_bias.item() == pytest.approx(jest.bias.item(), abs=1e-7)
    # the weights themselves: only the text projection's bias moved (into the last layer's LayerNorm shift)
    state, residual = open_clip_state_dict(jest.state_dict(), cfg.model)
    assert residual < 1e-5 and set(state) == set(model.state_dict())


def test_open_clip_metrics_equal_jest_ds_eval(open_clip_dir, short_reference, synthetic_root, tmp_path):
    sets = [synthetic_root / "eval" / "colours", synthetic_root / "eval" / "shapes_retrieval"]
    assert main(["eval", "--model", str(short_reference), "--sets", *map(str, sets), "--device", "cpu",
                 "--few-shot", "0", "--out", str(tmp_path / "jest.json")]) == 0
    jest = json.loads((tmp_path / "jest.json").read_text())["metrics"]

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    model.eval()
    with torch.no_grad():
        # zero-shot, the open_clip way: its own classifier builder (templates averaged), argmax of logits
        from open_clip.zero_shot_classifier import build_zero_shot_classifier

        spec = read_spec(sets[0])
        samples = raw_samples(sets[0])
        images = model.encode_image(torch.stack([preprocess(s["image"]) for s in samples]), normalize=True)
        labels = torch.tensor([s["meta"]["label"] for s in samples])
        classifier = build_zero_shot_classifier(model, tokenizer, spec["classes"], spec["templates"],
                                                num_classes_per_batch=None, device="cpu", use_tqdm=False)
        ranked = (images @ classifier).topk(5, dim=1).indices
        for k in (1, 5):
            acc = (ranked[:, :k] == labels[:, None]).any(1).float().mean().item()
            assert acc == pytest.approx(jest[f"eval/colours/top{k}"], abs=1e-6), k

        # retrieval: image <-> caption recall@k on open_clip's embeddings
        samples = raw_samples(sets[1])
        img = model.encode_image(torch.stack([preprocess(s["image"]) for s in samples]), normalize=True)
        txt = model.encode_text(tokenizer([s["caption"] for s in samples]), normalize=True)
        for k in (1, 5):
            assert recall(img, txt, k) == pytest.approx(jest[f"eval/shapes_retrieval/i2t_R@{k}"], abs=1e-6)
            assert recall(txt, img, k) == pytest.approx(jest[f"eval/shapes_retrieval/t2i_R@{k}"], abs=1e-6)


def test_export_errors_are_one_line(short_reference, tmp_path, capsys):
    def error(*argv):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("jest-ds: error: ") and "\n" not in err
        return err

    assert "exactly one of --model" in error("--format", "open_clip", "--out", str(tmp_path / "o"))
    assert "no such directory" in error("--format", "open_clip", "--model", str(tmp_path / "nope"),
                                        "--out", str(tmp_path / "o"))
    assert "is the jest-ds export itself" in error("--format", "open_clip", "--model", str(short_reference),
                                                    "--out", str(short_reference))
    assert "--model converts an export" in error("--model", str(short_reference), "--out", str(tmp_path / "o"))

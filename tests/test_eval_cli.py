"""`jest-ds eval` on an export made here and on evaluation sets built here, outside any dataset root,
run from another working directory: the tool users point at their own sets."""
import io
import json

import pytest
import torch
from PIL import Image

from synthetic_data import COLOURS, tiny_config
from jest_ds.cli import main
from jest_ds.config import config_from_dict
from jest_ds.data.eval_sets import write_eval_set
from jest_ds.data.tokenizer import CaptionTokenizer, train_tokenizer
from jest_ds.models import DualEncoder
from jest_ds.models.export import export_model


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _export(root, out, tokenizer_file):
    cfg = config_from_dict(tiny_config(root, out.parent / "run"))
    cfg.model.vocab_size = CaptionTokenizer.from_file(root / "tokenizer.json").vocab_size
    torch.manual_seed(0)
    export_model(DualEncoder(cfg.model).state_dict(), cfg, out, tokenizer_file=tokenizer_file)
    return out


@pytest.fixture(scope="module")
def export(synthetic_root, tmp_path_factory):
    """A (randomly initialised) tiny model exported with the synthetic dataset's tokenizer."""
    return _export(synthetic_root, tmp_path_factory.mktemp("model") / "export", synthetic_root / "tokenizer.json")


@pytest.fixture(scope="module")
def my_sets(tmp_path_factory):
    """Two sets of the user's own: 3 colour classes without templates (one corrupt image), and pairs."""
    base = tmp_path_factory.mktemp("my_sets")
    names = ["red", "green", "blue"]
    samples = [{"image": png(Image.new("RGB", (20, 12), COLOURS[names[i % 3]])), "ext": "png",
                "caption": f"a {names[i % 3]} square", "label": i % 3} for i in range(12)]
    samples[4] = {**samples[4], "image": b"not an image"}
    write_eval_set(base / "colour_trio", "zeroshot", samples, classes=names)
    write_eval_set(base / "pairs", "retrieval", [s for i, s in enumerate(samples) if i != 4])
    return base


def _run(capsys, *argv):
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_on_sets_outside_the_dataset_root(export, my_sets, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing may be resolved against the working directory
    code, out, err = _run(capsys, "--model", str(export), "--sets", str(my_sets / "colour_trio"),
                          str(my_sets / "pairs"), "--device", "auto", "--few-shot", "0",
                          "--out", str(tmp_path / "res.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "res.json").read_text())
    m = res["metrics"]
    assert 0 <= m["eval/colour_trio/top1"] <= 1 and "eval/colour_trio/top5" not in m  # 3 classes: no top-5
    assert m["eval/colour_trio/skipped"] == 1 and m["eval/pairs/skipped"] == 0
    assert res["sets"]["colour_trio"]["skipped"] == {"undecodable_image": 1}
    assert res["sets"]["colour_trio"]["samples"] == 11 and res["sets"]["pairs"]["samples"] == 11
    assert res["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert 0 <= m["eval/pairs/i2t_R@1"] <= 1 and 0 <= m["eval/pairs/t2i_R@5"] <= 1
    assert "colour_trio" in out and "skipped=1" in out
    assert "skipped 1 samples while loading: {'undecodable_image': 1}" in out


def test_set_names_are_looked_up_under_data_root(export, synthetic_root, capsys):
    code, out, err = _run(capsys, "--model", str(export), "--sets", "colours", "--data-root", str(synthetic_root),
                          "--device", "cpu", "--few-shot", "2")
    assert code == 0, err
    assert "colours" in out and "shapes_retrieval" not in out


def _one_line_error(result):
    code, _, err = result
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jest-ds: error: ")
    return lines[0]


def test_unknown_set_name_is_an_error_naming_it(export, synthetic_root, capsys):
    line = _one_line_error(_run(capsys, "--model", str(export), "--sets", "colours", "no_such_set",
                                "--data-root", str(synthetic_root), "--device", "cpu"))
    assert "'no_such_set'" in line and "colours" in line and "shapes_retrieval" in line


def test_bad_template_is_one_line_naming_set_and_template(export, my_sets, tmp_path, capsys):
    d = tmp_path / "named_field"
    write_eval_set(d, "zeroshot", [{"image": png(Image.new("RGB", (8, 8))), "label": 0}], classes=["x"])
    spec = json.loads((d / "eval.json").read_text())
    (d / "eval.json").write_text(json.dumps({**spec, "templates": ["a photo of {name}."]}))
    line = _one_line_error(_run(capsys, "--model", str(export), "--sets", str(d), "--device", "cpu"))
    assert "'named_field'" in line and "'a photo of {name}.'" in line and "{name}" in line


def test_a_tokenizer_of_another_vocabulary_is_refused(synthetic_root, my_sets, tmp_path, capsys):
    other = train_tokenizer(["a completely different caption set"], vocab_size=40,
                            path=tmp_path / "other_tokenizer.json", min_frequency=1)
    assert other.vocab_size != CaptionTokenizer.from_file(synthetic_root / "tokenizer.json").vocab_size
    export = _export(synthetic_root, tmp_path / "export", tmp_path / "other_tokenizer.json")
    line = _one_line_error(_run(capsys, "--model", str(export), "--sets", str(my_sets / "pairs"),
                                "--device", "cpu"))
    assert f"tokenizer has {other.vocab_size} tokens" in line and "model.vocab_size" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(export, my_sets, capsys):
    line = _one_line_error(_run(capsys, "--model", str(export), "--sets", str(my_sets / "pairs"),
                                "--device", "cuda"))
    assert "--device cuda: no CUDA device" in line


"""The README's zero-shot example, run verbatim on a tiny export and a folder of images."""
import random
import re
from pathlib import Path

import torch

from synthetic_data import TINY_MODEL, draw
from jest_ds.config import config_from_dict
from jest_ds.data.shards import decode_image, to_tensor
from jest_ds.inference import get_tokenizer
from jest_ds.models import DualEncoder
from jest_ds.models.export import export_model, load_exported

README = Path(__file__).resolve().parent.parent / "README.md"
MARKERS = ("<!-- readme-example:zero-shot -->", "<!-- /readme-example:zero-shot -->")


def readme_snippet() -> str:
    text = README.read_text()
    block = text[text.index(MARKERS[0]) + len(MARKERS[0]):text.index(MARKERS[1])]
    (code,) = re.findall(r"```python\n(.*?)```", block, flags=re.S)
    return code


def test_readme_zero_shot_example_runs_and_agrees_with_the_model(synthetic_root, tmp_path, monkeypatch, capsys):
    code = readme_snippet()
    export_dir = re.search(r'create_model_and_transforms\("([^"]+)"\)', code).group(1)
    image_dir = re.search(r'pathlib\.Path\("([^"]+)"\)', code).group(1)
    classes = eval(re.search(r"classes = (\[.*?\])", code).group(1))
    template = re.search(r'f"(.*?)" for c in classes', code).group(1)
    cfg = config_from_dict({"model": {**TINY_MODEL, "vocab_size": 64}, "data": {"root": str(synthetic_root)}})
    torch.manual_seed(0)
    export_model(DualEncoder(cfg.model).state_dict(), cfg, tmp_path / export_dir)
    rng = random.Random(0)
    images = {}
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "cross")]):
        images[f"img{i}.png"] = draw(colour, shape, 24, rng)  # not the model's size: preprocess resizes
        (tmp_path / image_dir).mkdir(exist_ok=True)
        (tmp_path / image_dir / f"img{i}.png").write_bytes(images[f"img{i}.png"])
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    # the same prediction, computed from the training pipeline's tensors and the model's forward
    model, _, _ = load_exported(tmp_path / export_dir)
    tokens = get_tokenizer(tmp_path / export_dir)([template.replace("{c}", c) for c in classes])
    assert len(lines) == len(images)
    for line, (name, png) in zip(lines, sorted(images.items())):
        with torch.no_grad():
            enc = model(to_tensor([decode_image(png, TINY_MODEL["image_size"])]), tokens)
        probs = torch.sigmoid(enc.img @ enc.txt.T * enc.log_scale.exp() + enc.bias)[0]
        assert line == f"{name}: {classes[int(probs.argmax())]} ({float(probs.max()):.2f})"

"""Users' own img2dataset shards, as img2dataset writes them, with no embedded dataset: the
tokenizer from `jest-ds data tokenizer`, a reference trained on them, `jest-ds cache-ref`, IID and
JEST runs; a truncated shard and undecodable images are skipped and counted."""
import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from synthetic_data import COLOURS, SHAPES, tiny_config
from jest_ds.cli import main as cli_main
from jest_ds.config import config_from_dict
from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls, write_tar
from jest_ds.train.metrics import read_metrics
from jest_ds.train.trainer import resolve_dataset, train


def _image(colour: str, shape: str, size: tuple[int, int], fmt: str, rng: random.Random) -> bytes:
    mode = "RGBA" if fmt == "png" else "RGB"
    im = Image.new(mode, size, (255, 255, 255, 0) if mode == "RGBA" else "white")
    w, h = size
    box = (rng.randint(0, w // 5), rng.randint(0, h // 5),
           w - 1 - rng.randint(0, w // 5), h - 1 - rng.randint(0, h // 5))
    draw = ImageDraw.Draw(im)
    fill = COLOURS[colour] + ((255,) if mode == "RGBA" else ())
    {"circle": draw.ellipse, "square": draw.rectangle}.get(shape, draw.rectangle)(box, fill=fill)
    buf = io.BytesIO()
    im.save(buf, format={"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt], **({"quality": 90} if fmt == "jpg" else {}))
    return buf.getvalue()


def make_img2dataset_shards(out: Path, n_shards: int = 4, per_shard: int = 64, seed: int = 0) -> Path:
    """Shards laid out as img2dataset writes them: 9-digit keys (shard id + index), jpg images (one
    webp and one RGBA png too), the caption in .txt, a json of img2dataset's fields, and
    `<shard>_stats.json` beside each tar. Shard 00001 holds a garbage image and a truncated JPEG;
    shard 00002 is truncated mid-file after it was written."""
    rng = random.Random(seed)
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            fmt = "webp" if (s, i) == (0, 5) else "png" if (s, i) == (0, 6) else "jpg"
            size = (rng.randint(14, 24), rng.randint(14, 24))
            data = _image(colour, shape, size, fmt, rng)
            if (s, i) == (1, 3):
                data = b"\x00 not an image at all"
            if (s, i) == (1, 9):
                data = data[: len(data) // 2]  # a JPEG cut short: opens, fails to decode
            caption = f"a {colour} {shape}"
            meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "error_message": None,
                    "width": 16, "height": 16, "original_width": size[0], "original_height": size[1],
                    "exif": json.dumps({"Image Orientation": "Horizontal (normal)"}),
                    "sha256": hashlib.sha256(data).hexdigest(), "caption": caption, "similarity": rng.random()}
            samples.append((key, {fmt: data, "txt": caption.encode(), "json": json.dumps(meta).encode()}))
        write_tar(out / f"{s:05d}.tar", samples)
        (out / f"{s:05d}_stats.json").write_text(json.dumps({
            "count": per_shard, "successes": per_shard, "failed_to_download": 0, "failed_to_resize": 0,
            "duration": 1.0, "start_time": 0.0, "end_time": 1.0, "status_dict": {"success": per_shard}}))
    tar = out / "00002.tar"
    if tar.is_file():
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size * 3 // 5])
    return out


@pytest.fixture(scope="module")
def user_shards(tmp_path_factory):
    return make_img2dataset_shards(tmp_path_factory.mktemp("laion") / "shards")


def test_reader_takes_img2dataset_shards_as_they_are(user_shards):
    urls = resolve_urls(user_shards)
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]  # no _stats.json
    skipped = SkipCounter()
    samples = list(iter_raw_samples(urls, skipped))
    by_key = {s["key"]: s for s in samples}
    assert by_key["000000005"]["png"][:4] == b"RIFF" and by_key["000000006"]["png"][:4] == b"\x89PNG"
    assert by_key["000000007"]["meta"]["url"] == "https://example.com/000000007.jpg"  # arbitrary fields pass
    assert "000010003" not in by_key and skipped["undecodable_image"] >= 1 and skipped["truncated_shard"] >= 1
    assert by_key["000010004"]["row"] == 4  # rows count the skipped sample
    assert 0 < sum(s["url"].endswith("00002.tar") for s in samples) < 64  # the part before the cut


def test_bad_shard_specs_and_missing_tokenizer_are_one_line_errors(user_shards, tmp_path):
    def error(**data):
        cfg = config_from_dict(tiny_config(Path(""), tmp_path, data={"root": "", "tokenizer": str(tmp_path / "t.json"),
                                                                       **data}))
        with pytest.raises(FileNotFoundError) as info:
            resolve_dataset(cfg)
        return str(info.value)

    (tmp_path / "empty").mkdir()
    msg = error(train_shards=str(tmp_path / "empty"))
    assert msg.startswith("data.train_shards = ") and "no .tar shards" in msg and "\n" not in msg
    msg = error(train_shards=str(tmp_path / "x" / "{00000..00003}.tar"))
    assert msg.startswith("data.train_shards = ") and "no shard files match" in msg
    msg = error(train_shards=[str(user_shards / "00000.tar"), str(user_shards / "00009.tar")])
    assert "00009.tar" in msg
    msg = error(train_shards=str(user_shards))
    assert msg.startswith("data.tokenizer = ") and "jest-ds data tokenizer" in msg


@pytest.mark.slow
def test_tokenizer_reference_cache_and_training_on_user_shards(user_shards, tmp_path, capsys):
    tok = tmp_path / "tokenizer.json"
    assert cli_main(["data", "tokenizer", "--shards", str(user_shards / "{00000..00003}.tar"), "--out", str(tok),
                     "--vocab-size", "64", "--min-frequency", "1"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tok.is_file() and info["captions"] > 200 and info["shards"] == 4
    data = {"root": "", "train_shards": str(user_shards), "tokenizer": str(tok), "shuffle_buffer": 64}

    # the reference: trained on (here, the same) users' shards, exported; IID at the same time
    ref = config_from_dict(tiny_config(Path(""), tmp_path / "reference", data=data,
                                       train={"steps": 4, "eval_every": 0, "log_every": 2}))
    train(ref, show_progress=False)
    summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert summary["step"] == 4
    assert summary["skipped"]["undecodable_image"] >= 2 and summary["skipped"]["truncated_shard"] >= 1
    rows = read_metrics(tmp_path / "reference")
    assert rows[-1]["data/skipped"] >= 3 and not any(k.startswith("eval/") for r in rows for k in r)

    # cache-ref with its defaults: <shards>/reference_cache and the export's own tokenizer
    assert cli_main(["cache-ref", "--reference", str(tmp_path / "reference" / "export"), "--shards",
                     str(user_shards), "--workers", "0", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["written"] == 4 and info["header_written"] and info["skipped"]["undecodable_image"] == 2
    assert (user_shards / "reference_cache" / "00002.json").is_file()

    # JEST on the cache (data.reference_cache left empty: the default directory)
    sel = {"method": "jest", "reference": str(tmp_path / "reference" / "export"), "filter_ratio": 0.5,
           "n_chunks": 4, "gain": 10.0}
    jest = config_from_dict(tiny_config(Path(""), tmp_path / "jest", data=data, selection=sel,
                                        train={"steps": 3, "eval_every": 0}))
    train(jest, show_progress=False)
    last = read_metrics(tmp_path / "jest")[-1]
    assert last["step"] == 3 and last["loss"] == last["loss"] and last["flops/selection"] > 0
    assert "sel/learnability_chosen" in last
    assert json.loads((tmp_path / "jest" / "summary.json").read_text())["skipped"]["undecodable_image"] >= 1

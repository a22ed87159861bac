"""Users' own img2dataset shards, as img2dataset writes them, with no embedded dataset: the
tokenizer from `jest-ds data tokenizer`, a reference trained on them, `jest-ds cache-ref`, IID and
JEST runs; a truncated shard and undecodable images are skipped and counted. The minimal YAML of
docs/data.md, read out of the doc, trains, evaluates on the user's own set and exports."""
import hashlib
import io
import json
import logging
import random
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

from synthetic_data import COLOURS, SHAPES, TINY_MODEL, tiny_config
from jest_ds.cli import main as cli_main
from jest_ds.config import ConfigError, config_from_dict, load_config
from jest_ds.data.eval_sets import resolve_eval_sets, run_eval_sets, write_eval_set
from jest_ds.models.export import load_run_config
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


# --------------------------------------------------------------------------- users' shards alone (issue 20, item 2)
DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_yaml_block(doc: str, first_line: str) -> str:
    """The ```yaml block of docs/<doc> whose first line is `first_line`, verbatim."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", (DOCS / doc).read_text(), re.S) if b.startswith(first_line)]
    assert len(blocks) == 1, f"docs/{doc}: expected one yaml block starting {first_line!r}, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def user_tokenizer(user_shards, tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    assert cli_main(["data", "tokenizer", "--shards", str(user_shards), "--out", str(tok), "--vocab-size", "64",
                     "--min-frequency", "1"]) == 0
    return tok


def test_train_shards_without_root_means_no_embedded_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/embedded here
    cfg = load_config(None, ["data.train_shards=/x/{0..3}.tar", "data.tokenizer=/x/t.json"])
    assert cfg.data.root == ""
    assert config_from_dict({"data": {"root": "mine", "train_shards": "/x"}}).data.root == "mine"  # named: kept
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"train_shards": "/x"}})
    msg = str(info.value)
    assert msg.startswith("config error: data.tokenizer = '': must name the tokenizer.json of data.train_shards")
    assert "data/embedded" not in msg and "\n" not in msg
    assert config_from_dict({}).data.root == "data/embedded"  # no train_shards: the embedded dataset, as before


def test_the_default_root_is_optional_beside_users_shards(user_shards, user_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {"train_shards": str(user_shards), "tokenizer": str(user_tokenizer)}
    # `base: tiny_jest` names data.root: data/embedded; absent, it is ignored
    cfg = config_from_dict(tiny_config(Path("data/embedded"), tmp_path / "run", data=data))
    root, urls, _ = resolve_dataset(cfg)
    assert root is None and len(urls) == 4
    # a root the user names must exist
    cfg = config_from_dict(tiny_config(tmp_path / "mine", tmp_path / "run", data=data))
    with pytest.raises(FileNotFoundError, match=r"^data.root = .*mine: no such directory"):
        resolve_dataset(cfg)


def test_eval_set_entries_are_paths_with_one_line_errors(user_shards, tmp_path):
    held_out = make_img2dataset_shards(tmp_path / "held_out", n_shards=1, per_shard=8, seed=3)
    sets = tmp_path / "my_sets"
    write_eval_set(sets / "pairs", "retrieval", [{"image": _image("red", "circle", (16, 16), "png", random.Random(i)),
                                                   "caption": f"pair {i}"} for i in range(4)])
    write_eval_set(sets / "shapes", "zeroshot", [{"image": _image("red", s, (16, 16), "png", random.Random(0)),
                                                   "label": i} for i, s in enumerate(SHAPES)], classes=SHAPES)
    assert run_eval_sets([], None) == []  # users' shards alone, no eval.sets: no evaluation
    assert run_eval_sets([str(held_out), str(sets)], None) == [held_out, sets / "pairs", sets / "shapes"]
    assert run_eval_sets([str(sets / "pairs")], None) == [sets / "pairs"]

    def error(entries, root=None, exc=FileNotFoundError):
        with pytest.raises(exc) as info:
            run_eval_sets(entries, root)
        msg = str(info.value)
        assert "\n" not in msg and "data/embedded" not in msg
        return msg

    assert error([str(sets), str(tmp_path / "nowhere")]).startswith(
        f"eval.sets[1] = '{tmp_path / 'nowhere'}': no such directory")
    assert error([str(held_out / "00000.tar")]).startswith(f"eval.sets[0] = '{held_out / '00000.tar'}': is a file")
    (tmp_path / "empty").mkdir()
    assert "no evaluation set in this directory" in error([str(tmp_path / "empty")])
    assert error(["icon_val"]).startswith("eval.sets[0] = 'icon_val': not a set directory")
    write_eval_set(tmp_path / "other" / "pairs", "retrieval", [{"image": _image("red", "circle", (16, 16), "png",
                                                                                random.Random(0)), "caption": "x"}])
    from jest_ds.errors import DataError
    assert "two evaluation sets are named 'pairs'" in error([str(sets), str(tmp_path / "other" / "pairs")],
                                                             exc=DataError)
    assert resolve_eval_sets([str(held_out)], None) == [held_out]  # `jest-ds eval --sets` reads them alike


@pytest.mark.slow
def test_the_documented_minimal_yaml_trains_evaluates_and_exports(user_shards, user_tokenizer, tmp_path, capsys,
                                                                  caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (none here) and no data/embedded
    held_out = make_img2dataset_shards(tmp_path / "laion_eval", n_shards=1, per_shard=40, seed=7)
    text = doc_yaml_block("data.md", "# my_run.yaml")
    for placeholder, real in {"/data/laion/{00000..01023}.tar": f"{user_shards}/{{00000..00003}}.tar",
                              "/data/tokenizer.json": str(user_tokenizer), "/data/laion_eval": str(held_out),
                              "runs/my_run": str(tmp_path / "runs" / "my_run")}.items():
        assert placeholder in text, f"docs/data.md's my_run.yaml no longer holds {placeholder}"
        text = text.replace(placeholder, real)
    values = yaml.safe_load(text)
    assert set(values) <= {"name", "data", "model", "train", "eval"} and set(values["data"]) == {"train_shards",
                                                                                                "tokenizer"}
    (tmp_path / "my_run.yaml").write_text(text)
    # the test's scale: a tiny model and a few steps, merged over the documented file
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({
        "model": TINY_MODEL, "data": {"shuffle_buffer": 64, "num_workers": 0},
        "train": {"steps": 4, "batch_size": 32, "eval_every": 2, "log_every": 2, "precision": "fp32",
                  "tensorboard": False}, "eval": {"few_shot": 0}}))
    caplog.set_level(logging.INFO)
    assert cli_main(["train", "--config", "my_run.yaml", "--config", "small.yaml", "--quiet", "--print-json"]) == 0
    out, err = capsys.readouterr()
    final = json.loads(out.strip().splitlines()[-1])
    assert {"eval/laion_eval/i2t_R@1", "eval/laion_eval/t2i_R@5", "eval/laion_eval/headline"} <= final.keys()
    run = tmp_path / "runs" / "my_run"
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "eval/laion_eval/i2t_R@1" in r] == [0, 2, 4]
    assert load_run_config(run / "export").data.root == ""
    assert "data/embedded" not in out + err + caplog.text
    # the export evaluates on the same set through `jest-ds eval`, to the same numbers
    assert cli_main(["eval", "--model", str(run / "export"), "--sets", str(held_out), "--device", "cpu",
                     "--few-shot", "0", "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    for key in ("eval/laion_eval/i2t_R@1", "eval/laion_eval/t2i_R@5"):
        assert again[key] == pytest.approx(final[key], abs=1e-6)

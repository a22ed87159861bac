"""WordPiece caption tokenizer."""

from __future__ import annotations

import torch

from jest_ds.data.tokenizer import CaptionTokenizer, train_tokenizer

CAPS = [f"an {k} of {a} {b}." for k in ("icon", "emoji") for a in ("red", "green", "blue", "grinning")
        for b in ("cat", "face", "house", "arrow", "circle")]


def test_round_trip_and_special_tokens(tmp_path):
    path = tmp_path / "tokenizer.json"
    tok = train_tokenizer(CAPS, vocab_size=300, path=path)
    assert path.is_file()
    tok2 = CaptionTokenizer.from_file(path)
    assert tok2.vocab_size == tok.vocab_size and tok2.pad_id == 0
    ids = tok2.encode_batch(["An Icon of RED cat.", "an emoji of grinning face."], 16)
    assert ids.dtype == torch.int64 and ids.shape == (2, 16)
    assert ids[:, 0].tolist() == [tok2.cls_id] * 2
    n0 = int((ids[0] != 0).sum())
    assert ids[0, n0 - 1] == tok2.sep_id and (ids[0, n0:] == 0).all()
    assert tok2.decode(ids[0]) == "an icon of red cat."     # lower-cased
    assert tok2.decode(ids[1]) == "an emoji of grinning face."
    assert torch.equal(tok.encode_batch(CAPS[:5], 16), tok2.encode_batch(CAPS[:5], 16))


def test_truncation_keeps_sep_and_unknown_words(tmp_path):
    tok = train_tokenizer(CAPS, vocab_size=300, path=tmp_path / "t.json")
    ids = tok.encode_batch(["an icon of red cat " * 10], 6)
    assert ids.shape == (1, 6)
    assert ids[0, 0] == tok.cls_id and ids[0, -1] == tok.sep_id and (ids != 0).all()
    assert tok.encode_batch([], 6).shape == (0, 6)
    out = tok.encode_batch(["zzzqqq"], 8)[0].tolist()
    assert out[0] == tok.cls_id and tok.sep_id in out

"""WordPiece caption tokenizer (Hugging Face ``tokenizers``), built from the captions.

BERT-style: lower-cased, accents stripped, special tokens ``[PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4``; the post-processor wraps every caption as ``[CLS] … [SEP]``.

``encode_batch(captions, context_length)`` returns an int64 tensor ``[n, L]`` padded with
``pad_id`` (0). Captions longer than ``L`` are truncated *inside* the special tokens: the
result still starts with ``[CLS]`` and ends with ``[SEP]`` (the text is cut, not the
``[SEP]``), so a model may pool on either. Nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from jest_ds.errors import ConfigError, DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _build_empty_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_tokenizer(captions: Iterable[str], vocab_size: int, path: str | Path | None = None,
                    min_frequency: int = 2) -> "CaptionTokenizer":
    """Build a WordPiece tokenizer from ``captions``; save it to ``path`` (tokenizer.json) if given.

    The vocabulary is learnt deterministically (the ``tokenizers`` WordPieceTrainer breaks
    frequency ties in hash-map order, so two runs give different files): the captions go
    through the library's BERT normaliser and pre-tokeniser, then the vocabulary is
    ``[PAD] [UNK] [CLS] [SEP] [MASK]``, every character seen (``c`` and ``##c``, so no word is
    ever [UNK]), then whole words by descending frequency (ties alphabetical, at least
    ``min_frequency`` occurrences) up to ``vocab_size``. The ``tokenizers`` WordPiece model
    then splits rarer words greedily into the longest known pieces. Same captions → the same
    tokenizer.json, byte for byte.
    """
    from collections import Counter

    from tokenizers import models, processors

    base = _build_empty_tokenizer()
    norm, pre = base.normalizer, base.pre_tokenizer
    counts: Counter[str] = Counter()
    for c in captions:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(c)):
            counts[w] += 1
    chars = sorted({ch for w in counts for ch in w})
    vocab_list = list(SPECIAL_TOKENS) + chars + ["##" + ch for ch in chars]
    if not chars:
        raise DataError("no words in the captions to build a tokenizer from")
    if vocab_size < len(vocab_list):
        raise ConfigError(f"--vocab-size {vocab_size}: must be at least {len(vocab_list)} for these captions "
                         f"({len(SPECIAL_TOKENS)} special tokens + 2 x {len(chars)} characters, so that no word is "
                         "[UNK])")
    have = set(vocab_list)
    for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab_list) >= vocab_size or n < min_frequency:
            break
        if w not in have:
            vocab_list.append(w)
            have.add(w)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = _build_empty_tokenizer()
    tok.model = models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                 max_input_chars_per_word=100)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocab: ids unchanged
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path), pretty=False)
    return CaptionTokenizer(tok)


def train_tokenizer_from_shards(shards, vocab_size: int, path: str | Path, max_captions: int = 0,
                                min_frequency: int = 2) -> tuple["CaptionTokenizer", dict]:
    """`train_tokenizer` on the captions of webdataset shards (`jest-ds data tokenizer`): every
    sample the training reader would use (first `max_captions` of them in shard order if > 0).
    Returns the tokenizer and {"path", "vocab_size", "captions", "shards", "skipped"}."""
    from itertools import islice

    from jest_ds.data.shards import SkipCounter, iter_raw_samples, resolve_urls

    urls = resolve_urls(shards)
    skipped = SkipCounter()
    samples = iter_raw_samples(urls, skipped, check_png=False)
    captions = [s["caption"] for s in (islice(samples, max_captions) if max_captions > 0 else samples)]
    if not captions:
        raise DataError(f"no readable captions in the shards ({urls[0]}{' …' if len(urls) > 1 else ''})")
    tok = train_tokenizer(captions, vocab_size, path, min_frequency=min_frequency)
    return tok, {"path": str(path), "vocab_size": tok.vocab_size, "captions": len(captions), "shards": len(urls),
                 "skipped": skipped.as_dict()}


class CaptionTokenizer:
    """Thin wrapper: batch-encode captions to a fixed-length LongTensor."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.pad_id = 0
        missing = [t for t in SPECIAL_TOKENS[:4] if tokenizer.token_to_id(t) is None]
        if missing:
            raise DataError(f"not a caption tokenizer: no {', '.join(missing)} token (make one with "
                             "`jest-ds data tokenizer`)")
        pad = tokenizer.token_to_id("[PAD]")
        if pad != 0:
            raise DataError(f"tokenizer's [PAD] id is {pad}, expected 0")
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        self.unk_id = tokenizer.token_to_id("[UNK]")

    @classmethod
    def from_file(cls, path: str | Path) -> "CaptionTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises a bare Exception for any file it cannot parse
            raise DataError(f"{path} is not a tokenizer.json ({' '.join(str(exc).split())[:120]})") from None
        try:
            return cls(tok)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None

    def fingerprint(self) -> str:
        """sha256 of the tokenizer's canonical serialisation (without the truncation and padding
        settings `encode_batch` changes): equal for two files that tokenise alike whatever their
        formatting, different for another vocabulary, normaliser or post-processor."""
        import hashlib
        import json

        spec = {k: v for k, v in json.loads(self._tok.to_str()).items() if k not in ("truncation", "padding")}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self):
        return self._tok

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path), pretty=False)

    def encode_batch(self, captions: Sequence[str], context_length: int) -> torch.Tensor:
        if context_length < 2:
            raise ValueError("context_length must be >= 2 ([CLS] and [SEP])")
        out = torch.full((len(captions), context_length), self.pad_id, dtype=torch.long)
        if not captions:
            return out
        tok = self._tok
        tok.enable_truncation(max_length=context_length)
        tok.no_padding()
        encs = tok.encode_batch(list(captions))
        for i, enc in enumerate(encs):
            ids = enc.ids
            if len(ids) > context_length:  # defensive; truncation already keeps [SEP]
                ids = ids[: context_length - 1] + [self.sep_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def encode(self, caption: str, context_length: int) -> torch.Tensor:
        return self.encode_batch([caption], context_length)[0]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id], skip_special_tokens=True)

"""Data layer: embedded dataset builder, webdataset reader, tokenizer, evaluation sets."""

from .eval_sets import EvalSet, list_eval_sets, load_eval_set
from .shards import Batch, ShardBatches, SkipCounter, resolve_urls, write_tar
from .tokenizer import CaptionTokenizer, train_tokenizer

__all__ = [
    "Batch", "CaptionTokenizer", "EvalSet", "ShardBatches", "SkipCounter", "list_eval_sets",
    "load_eval_set", "resolve_urls", "train_tokenizer", "write_tar",
]

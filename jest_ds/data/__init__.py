"""Data layer: shard I/O, the training order and loader, tokenizer,
evaluation sets."""

from .eval_sets import EvalSet, list_eval_sets, load_eval_set
from .loader import SuperBatchLoader
from .shards import Batch, SkipCounter, resolve_urls, write_tar
from .tokenizer import CaptionTokenizer, train_tokenizer

__all__ = [
    "Batch", "CaptionTokenizer", "EvalSet", "SkipCounter", "SuperBatchLoader", "list_eval_sets",
    "load_eval_set", "resolve_urls", "train_tokenizer", "write_tar",
]

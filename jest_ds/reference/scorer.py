"""The frozen reference model's embeddings for a super-batch: from the cache, or by a forward pass."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from jest_ds.config import PRECISION_DTYPES, ExperimentConfig, resolve_precision
from jest_ds.data.tokenizer import CaptionTokenizer
from jest_ds.models.dual_encoder import encode_in_micro_batches
from jest_ds.models.export import TOKENIZER, load_exported, verified_file
from jest_ds.reference.cache import ReferenceCache, default_cache_dir
from jest_ds.selection import Embeddings
from jest_ds.errors import ConfigError


def cache_dir(cfg: ExperimentConfig, train_urls: Sequence[str]) -> Path:
    """`data.reference_cache`, or `<directory of the first training shard>/reference_cache`."""
    return Path(cfg.data.reference_cache) if cfg.data.reference_cache else default_cache_dir(train_urls)


class ReferenceScorer:
    """`embeddings(batch)` -> reference `Embeddings` for the batch's samples (None when not needed).

    The reference reads captions with ITS OWN tokenizer (the export's tokenizer.json): a forward
    re-tokenises the batch's captions unless the run's tokenizer is the same one, and a cache is
    accepted only if it was made with that tokenizer.

    ``partition``: how the training side partitions the frozen reference over the ranks
    (``selection.reference_zero3`` with a world size > 1; `jest_ds.train.engine.build_frozen_engine`),
    given the model, returning the module to call."""

    def __init__(self, cfg: ExperimentConfig, train_urls: Sequence[str], device: torch.device, world_size: int,
                 tokenizer: CaptionTokenizer | None = None,
                 partition: Callable[[nn.Module], nn.Module] | None = None):
        s = cfg.selection
        self.mode = "none"
        self.model = None
        self.cache = None
        self.device = device
        self.tokenizer = None  # None: the batch's tokens are the reference's too
        self.micro_batch = cfg.score_micro_batch(world_size)  # rows per forward call
        if s.method == "iid" or s.score == "hard_learner":
            return
        # cached: only the hash and config are used, so the weights stay on the CPU and are dropped
        model, ref_cfg, digest = load_exported(s.reference, "cpu" if s.reference_mode == "cached" else device)
        self.digest = digest
        self.config = ref_cfg
        ref_tokenizer = CaptionTokenizer.from_file(verified_file(s.reference, TOKENIZER))
        self.context_length = ref_cfg.model.context_length
        if s.reference_mode == "cached":
            self.cache = ReferenceCache(cache_dir(cfg, train_urls), expected_hash=digest,
                                        expected_tokenizer=ref_tokenizer.fingerprint())
            self.cache.check_covers(train_urls)
            self.mode = "cached"
        else:
            if ref_cfg.model.image_size != cfg.model.image_size:
                raise ConfigError(f"reference {s.reference}: image_size {ref_cfg.model.image_size} differs from "
                                 f"the learner's {cfg.model.image_size}; the uncached forward needs the same")
            if s.reference_zero3 and world_size > 1:
                if partition is None:
                    raise ValueError("selection.reference_zero3 with several ranks: the reference scorer needs the "
                                     "training side's partition (jest_ds.train.engine.build_frozen_engine)")
                model = partition(model)
            else:  # a replicated reference runs in the run's precision too (its outputs are upcast below)
                model = model.to(getattr(torch, PRECISION_DTYPES[resolve_precision(cfg.train.precision)]))
            self.model = model
            self.mode = "forward"
            same = (tokenizer is not None and tokenizer.fingerprint() == ref_tokenizer.fingerprint()
                    and self.context_length == cfg.model.context_length)
            self.tokenizer = None if same else ref_tokenizer

    @torch.no_grad()
    def embeddings(self, batch) -> Embeddings | None:
        if self.mode == "none":
            return None
        if self.mode == "cached":
            # looked up by the loader's worker (Trainer passes it the cache), else here
            img, txt = batch.reference or self.cache.lookup(batch.urls, batch.rows, batch.keys)
            return Embeddings(img.to(self.device).float(), txt.to(self.device).float(), self.cache.log_scale.to(self.device),
                              self.cache.bias.to(self.device))
        tokens = batch.tokens
        if self.tokenizer is not None:  # the run's tokenizer is not the reference's
            if len(batch.captions) != len(batch.keys):
                raise ValueError("reference forward with the reference's own tokenizer needs the batch's captions")
            tokens = self.tokenizer.encode_batch(batch.captions, self.context_length)
        enc = encode_in_micro_batches(self.model, batch.images.to(self.device), tokens.to(self.device),
                                      self.micro_batch)
        return Embeddings(enc.img.float(), enc.txt.float(), enc.log_scale.float(), enc.bias.float())

"""The training data loader: one super-batch (this rank's B/world candidates) per step, forever.

A torch ``DataLoader`` over ``SuperBatchDataset`` (an ``IterableDataset`` yielding whole
batches): decoding and tokenising run in ``num_workers`` worker processes (0: in the training
process), each worker prepares ``prefetch_factor`` batches ahead, and batches land in pinned
memory when CUDA is available. Which worker reads, verifies and decodes what, and the order
of every batch, follow ``order.py``.

```python
loader = SuperBatchLoader(urls, batch_size, image_size, tokenizer, context_length, seed=0,
                          rank=0, world_size=1, num_workers=-1, split="auto", skipped=SkipCounter())
for batch in loader:                 # infinite; batch.images uint8 [n, 3, H, W], batch.tokens int64 [n, L]
    ...
state = loader.state_dict()          # after the batches consumed so far
loader.load_state_dict(state)        # the next iter(loader) continues exactly there
```

In sample mode the saved position is the global stream's, the same on every rank, so a
checkpoint resumes at any world size (``resharded``); in shard mode only at its own.

``num_workers = -1`` means ``max(1, cores // local ranks - 1)``: the CPU cores this process may
use, shared among the ranks of the node (``LOCAL_WORLD_SIZE`` from torchrun, ``LOCAL_SIZE``
from the deepspeed launcher, else 1), minus one core for the training process itself.

With ``reference_cache`` (a `jest-ds cache-ref` directory) each worker also looks up the reference
embeddings of its batch's samples (``Batch.reference``), so the lookup runs ahead of training with
the decoding instead of inside the training step. A user error raised in a worker (a cache row that
is not the batch's sample, say) reaches the caller as its own one-line message.

Skips found by workers travel with the batch that owns them and are added to ``skipped`` when
that batch is handed out, so batches prefetched but never consumed count nothing; the state
and the counter therefore always agree (a resumed run re-reads and re-counts them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .counts import count_samples
from .order import EventLog, OwnedBatch, Position, resolve_split, sample_mode_batches, shard_mode_batches
from .shards import Batch, SkipCounter, decode_image, image_ok, iter_raw_samples, pixels, resolve_urls

from jest_ds.errors import ConfigError, DataError

log = logging.getLogger("jest_ds.data")


def default_num_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    return max(1, cores // max(1, local_ranks) - 1)


def decode_batch(samples: list[dict], image_size: int, tokenizer, context_length: int, skipped) -> Batch:
    """Verify, decode and tokenise one batch. An image that fails is counted in ``skipped``
    (``undecodable_image``) and replaced by the next good sample of the batch (cyclically), so
    the batch keeps its size."""
    n = len(samples)
    arrays: list[np.ndarray | None] = []
    for s in samples:
        where = f"{s['key']} in {s['url']}"
        arr = None
        if not image_ok(s["png"]):
            skipped.add("undecodable_image", where)
        else:
            try:
                arr = decode_image(s["png"], image_size)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt sample
                skipped.add("undecodable_image", f"{where}: {e}")
        arrays.append(arr)
    if all(a is None for a in arrays):
        raise RuntimeError(f"every image of a batch of {n} failed to decode (e.g. {samples[0]['key']} in "
                           f"{samples[0]['url']}): the training shards are mostly corrupt")
    source = [next(j % n for j in range(i, i + n) if arrays[j % n] is not None) for i in range(n)]
    picked = [samples[i] for i in source]
    captions = [s["caption"] for s in picked]
    return Batch(images=pixels([arrays[i] for i in source]),
                 tokens=tokenizer.encode_batch(captions, context_length),
                 keys=[s["key"] for s in picked], meta=[s["meta"] for s in picked], captions=captions,
                 urls=[s["url"] for s in picked], rows=[s["row"] for s in picked])


def read_structurally_valid(urls: list[str], skipped) -> Iterator[dict]:
    """The order's shard reader: tar bytes and structure only, no pixel check."""
    return iter_raw_samples(urls, skipped, check_png=False)


@dataclass
class LoadedBatch:
    """What a worker hands over: the batch, the skip events it owns, the stream position after
    it, and the worker slot it came from (shard mode; -1 in sample mode)."""

    batch: Batch
    events: list[tuple[str, str]]
    after: list[int]
    slot: int

    def pin_memory(self) -> "LoadedBatch":  # called by DataLoader's pin-memory thread
        ref = self.batch.reference
        b = replace(self.batch, images=self.batch.images.pin_memory(), tokens=self.batch.tokens.pin_memory(),
                    reference=None if ref is None else (ref[0].pin_memory(), ref[1].pin_memory()))
        return replace(self, batch=b)


@dataclass(frozen=True)
class LoaderPlan:
    """Everything a worker needs (copied into each worker process)."""

    urls: list[str]
    batch_size: int
    image_size: int
    tokenizer: object
    context_length: int
    seed: int
    rank: int
    world_size: int
    workers: int  # logical workers per rank (>= 1; 1 when decoding in-process)
    split: str    # "sample" | "shard"
    shuffle_buffer: int
    reference_cache: str = ""  # a cache directory: workers look up Batch.reference ("" : no lookup)


class SuperBatchDataset(IterableDataset):
    """Infinite batches for one rank from a start state; physical worker ``p`` of a fresh
    iterator produces the rank's batches ``p, p + W, …`` counted from that state."""

    def __init__(self, plan: LoaderPlan, start: dict):
        self.plan = plan
        self.start = start

    def owned_batches(self, worker: int) -> Iterator[OwnedBatch]:
        p = self.plan
        if p.split == "sample":
            return sample_mode_batches(p.urls, p.seed, p.shuffle_buffer, read_structurally_valid,
                                       Position.from_list(self.start["position"]), rank=p.rank,
                                       world_size=p.world_size, batch_size=p.batch_size, worker=worker,
                                       n_workers=p.workers)
        logical = (self.start["batches"] + worker) % p.workers
        return shard_mode_batches(p.urls, p.seed, p.shuffle_buffer, read_structurally_valid,
                                  Position.from_list(self.start["slots"][logical]),
                                  slot=p.rank * p.workers + logical, n_slots=p.world_size * p.workers,
                                  batch_size=p.batch_size)

    def __iter__(self) -> Iterator[LoadedBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        p = self.plan
        cache = None
        if p.reference_cache:
            from jest_ds.reference.cache import ReferenceCache

            cache = ReferenceCache(p.reference_cache)  # checked against the reference by the trainer
        for owned in self.owned_batches(worker):
            events = EventLog()
            events.pending = list(owned.events)
            batch = decode_batch(owned.samples, p.image_size, p.tokenizer, p.context_length, events)
            if cache is not None:
                batch.reference = cache.lookup(batch.urls, batch.rows, batch.keys)
            slot = owned.slot - p.rank * p.workers if owned.slot >= 0 else -1
            yield LoadedBatch(batch, events.take(), owned.after.as_list(), slot)


class SuperBatchLoader:
    """This rank's training batches (see the module docstring and ``order.py``)."""

    def __init__(self, urls, batch_size: int, image_size: int, tokenizer, context_length: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, split: str = "auto",
                 shuffle_buffer: int = 1000, num_samples: int = 0, prefetch_factor: int = 2,
                 skipped: SkipCounter | None = None, pin_memory: bool | None = None,
                 reference_cache: str | Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if num_workers < -1:
            raise ConfigError(f"config error: data.num_workers = {num_workers}: must be >= 0, or -1 for the core count")
        self.urls = resolve_urls(urls)
        if isinstance(tokenizer, (str, Path)):
            from .tokenizer import CaptionTokenizer

            tokenizer = CaptionTokenizer.from_file(tokenizer)
        self.num_workers = default_num_workers() if num_workers == -1 else num_workers
        workers = max(1, self.num_workers)
        self.plan = LoaderPlan(self.urls, batch_size, image_size, tokenizer, context_length, seed, rank, world_size,
                               workers, resolve_split(split, len(self.urls), world_size * workers),
                               max(1, int(shuffle_buffer)), str(reference_cache or ""))
        self.prefetch_factor = prefetch_factor
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.num_samples, count_source = count_samples(self.urls, num_samples)
        super_batch = batch_size * world_size
        if self.num_samples is not None and self.num_samples < super_batch:
            raise DataError(f"{self.num_samples} samples ({count_source}) are too few for a super-batch of "
                             f"{super_batch} (shards: {self.urls[0]}{' …' if len(self.urls) > 1 else ''})")
        if self.plan.split == "shard" and self.num_samples is not None \
                and self.num_samples // (world_size * workers) < batch_size:
            log.warning("data.split = shard: ~%d samples per (rank, worker) per epoch is less than one batch of %d; "
                        "batches will span epochs (data.split = sample avoids that)",
                        self.num_samples // (world_size * workers), batch_size)
        self._batches = 0
        self._position = Position()
        self._slots = [Position() for _ in range(workers)]
        log.info("training data: %d shard(s), %s samples (%s), split %s, %d decode worker(s) per rank, "
                 "batch %d per rank", len(self.urls), self.num_samples if self.num_samples is not None else "?",
                 count_source, self.plan.split, self.num_workers, batch_size)

    # -- sizes and progress -------------------------------------------------------------------
    @property
    def split(self) -> str:
        return self.plan.split

    @property
    def batches_per_epoch(self) -> int | None:
        """Steps per pass over the data (from the sample count; None when it is unknown)."""
        if self.num_samples is None:
            return None
        return self.num_samples // (self.plan.batch_size * self.plan.world_size)

    @property
    def epoch(self) -> int:
        """The epoch the next batch starts in (shard mode: the earliest of this rank's slots)."""
        if self.plan.split == "sample":
            return self._position.epoch
        return min(p.epoch for p in self._slots)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        p = self.plan
        state = {"split": p.split, "seed": p.seed, "world_size": p.world_size, "workers": p.workers,
                 "batches": self._batches}
        if p.split == "sample":
            state["position"] = self._position.as_list()
        else:
            state["slots"] = [s.as_list() for s in self._slots]
        return state

    def load_state_dict(self, state: dict) -> None:
        p = self.plan
        if state["split"] != p.split:
            raise DataError(f"the checkpoint's data order is split by {state['split']}, this run's by {p.split}: "
                             f"set data.split = {state['split']} to resume")
        if state["seed"] != p.seed:
            raise DataError(f"the checkpoint's data order has seed {state['seed']}, this run {p.seed}: "
                             f"set train.seed = {state['seed']} to resume")
        if p.split == "shard" and (state["world_size"], state["workers"]) != (p.world_size, p.workers):
            raise DataError(
                f"the checkpoint's data order deals shards to {state['world_size']} rank(s) × {state['workers']} "
                f"worker(s), this run to {p.world_size} × {p.workers}: resume with the same world size and "
                f"data.num_workers")
        self._batches = int(state["batches"])
        if p.split == "sample":
            self._position = Position.from_list(state["position"])
        else:
            self._slots = [Position.from_list(s) for s in state["slots"]]

    def resharded(self, states: list[dict], rank: int, world: int, where) -> dict:
        """This rank's loader state from the states the ``len(states)`` ranks of a checkpoint saved
        (checkpoint ``where``), for a run on ``world`` ranks. Sample mode: every rank saved the same
        global position (the next item of the global stream, which does not depend on the world
        size), so the stream continues there; shard mode deals shards to ranks × workers and
        cannot be re-dealt without repeating or skipping examples of the epoch."""
        first = states[0]
        if first["split"] == "shard":
            raise DataError(
                f"checkpoint {where}: its data order deals shards to {first['world_size']} rank(s) × "
                f"{first['workers']} worker(s) (data.split = shard) and cannot be re-dealt to {world} rank(s) "
                f"without repeating or skipping examples: resume it on {first['world_size']} rank(s) "
                "(runs that must change size need data.split = sample)")
        if any((s["split"], s["seed"], s["position"], s["batches"]) !=
               (first["split"], first["seed"], first["position"], first["batches"]) for s in states[1:]):
            raise DataError(f"checkpoint {where}: its ranks saved different data positions "
                            f"({sorted({tuple(s['position']) for s in states})}): resume from another checkpoint")
        return {**first, "world_size": world, "workers": self.plan.workers}

    # -- iteration ----------------------------------------------------------------------------
    def _start(self) -> dict:
        return {"batches": self._batches, "position": self._position.as_list(),
                "slots": [s.as_list() for s in self._slots]}

    def __iter__(self) -> Iterator[Batch]:
        dataset = SuperBatchDataset(self.plan, self._start())
        workers = self.num_workers
        # A private generator: DataLoader draws its worker seed from it, not from the global torch
        # RNG that training owns (a resumed run must see the same global RNG stream).
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if workers > 0 else None,
                            generator=torch.Generator().manual_seed(self.plan.seed))
        batches = iter(loader)
        try:
            for loaded in _user_errors_unwrapped(batches):
                for reason, detail in loaded.events:
                    self.skipped.add(reason, detail)
                self._batches += 1
                after = Position.from_list(loaded.after)
                if loaded.slot < 0:
                    self._position = after
                else:
                    self._slots[loaded.slot] = after
                yield loaded.batch
        finally:
            del batches  # shuts the worker processes down


def _user_errors_unwrapped(batches: Iterator) -> Iterator:
    """``batches``, except that a user error (`jest_ds.errors.USER_ERRORS`) a worker raised is raised
    again with its own message: DataLoader re-raises it with the worker's traceback in the message,
    which would bury the one line the user needs. Bugs keep everything."""
    from jest_ds.errors import USER_ERRORS

    while True:
        try:
            loaded = next(batches)
        except StopIteration:
            return
        except USER_ERRORS as exc:
            text = str(exc)
            if not text.startswith("Caught ") or "Original Traceback" not in text:
                raise
            last = text.rstrip().splitlines()[-1]  # "module.ErrorType: the message"
            message = last.split(": ", 1)[1] if ": " in last else last
            raise type(exc)(message) from None
        yield loaded

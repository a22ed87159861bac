"""The deterministic order of the training stream, who reads what, and where a resume starts.

Everything here is a pure function of (shard list, seed, epoch, rank, world size, workers);
reading a shard is injected (``read``), so the rule can be tested without tars.

Valid items. An item is a sample that passes the *structural* checks of
``shards.iter_raw_samples(check_png=False)`` (image member present, caption, well-formed
json). The pixel check (PNG verify + decode) is done later, only by the worker that owns the
sample (see "Corrupt images" below), so nobody decodes or verifies another worker's samples.

Epoch order (``global_epoch``, ``slot_epoch``). Epoch ``e`` permutes the shard list with
``Random(f"jest-ds-shards-{seed}-{e}")`` and streams the valid items of the shards in that
order through a shuffle buffer of ``shuffle_buffer`` items driven by the same RNG.

Two splits (``resolve_split``):

``sample`` (world-size invariant). The *global stream* is epoch 0's order, then epoch 1's, …
forever. Step ``k``'s super-batch is global items ``[kB, (k+1)B)`` (``B = world × batch_size``);
rank ``r`` gets the items whose index ``q`` inside the super-batch has ``q % world == r``, in
order. A 1-rank and a 2-rank run therefore score the same B candidates at every step. Every
worker of every rank reads the raw bytes of the whole stream (cheap: tar parsing, no pixels);
with ``W`` workers per rank, worker ``w`` owns the super-batches ``k ≡ w (mod W)`` counted from
where the iterator started, and decodes only its rank's items of those. A torch DataLoader
takes batches from its workers round-robin, which restores step order.

``shard`` (each reader opens only its own files). There are ``S = world × W`` *slots*; slot
``s = rank × W + w`` receives ``permuted_shards[s::S]`` in epoch ``e`` and streams their valid
items through its own shuffle buffer (``Random(f"jest-ds-slot-{seed}-{e}-{s}")``); its stream
is its epoch 0 part, then its epoch 1 part, … forever. Rank batch ``j`` is batch ``j // W`` of
slot ``rank × W + j % W``. The order depends on ``W``; resuming needs the same world size and
``data.num_workers``. ``auto`` picks ``shard`` when there are at least ``S`` shards.

Ranks never go out of step: every stream is infinite, so every rank yields exactly one batch
per step forever, whatever the per-shard counts or the number of corrupt samples. Epoch
boundaries need no sample count: a batch may end in one epoch and continue in the next (a
rank that runs dry simply continues into its next epoch), nothing is dropped, and each valid
item appears exactly once per epoch of its stream. In shard mode a slot whose shards hold more
items in an epoch enters its next epoch a little later than the others.

Resume (``Position``). A position is ``(epoch, offset)``: the next item is item ``offset`` of
that epoch's order (of the global stream in sample mode, of the slot's stream in shard mode).
Every batch carries the position after it. A resumed reader replays the epoch from its start,
skipping ``offset`` items by their tar bytes alone (no PNG check, no decode), so it reproduces
the uninterrupted stream exactly. In sample mode the position is the global stream's, the same on
every rank and independent of the world size and the workers, so a checkpoint resumes on any
number of ranks (``SuperBatchLoader.resharded``); a shard-mode position belongs to its slot and
resumes only with the same ranks × workers.

Skips. Structural skips (a sample without image or caption, bad json, a truncated or corrupt
shard) are *events* attached to the next valid item of the stream; they are counted by the
worker that owns that item, so every event is counted once, by one (rank, worker), whatever
the number of workers. Events of the items skipped on resume were counted before the
checkpoint and are dropped.

Corrupt images. The owner verifies and decodes its items; an item that fails is counted
(``undecodable_image``) and its slot in the batch is filled with a copy of the next good item
of the same batch (cyclically), so batch sizes never change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

from jest_ds.errors import ConfigError, DataError

SkipEvent = tuple[str, str]  # (reason, detail)


@dataclass(frozen=True)
class Position:
    """The next item of a stream: item ``offset`` (from 0) of epoch ``epoch``'s order."""

    epoch: int = 0
    offset: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.offset]

    @classmethod
    def from_list(cls, value) -> "Position":
        epoch, offset = (int(v) for v in value)
        return cls(epoch, offset)


class EventLog:
    """Collects skip events (``SkipCounter.add``'s signature) until a stream item takes them."""

    def __init__(self) -> None:
        self.pending: list[SkipEvent] = []

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        self.pending.extend([(reason, detail)] * n)

    def take(self) -> list[SkipEvent]:
        out, self.pending = self.pending, []
        return out


@dataclass
class StreamItem:
    sample: dict
    position: Position                                     # this item's own position
    events: list[SkipEvent] = field(default_factory=list)  # skips met since the previous item


@dataclass
class OwnedBatch:
    """One batch a (rank, worker) produces: its samples, the skip events it owns, where the
    stream continues after it, and the slot (shard mode) that produced it (-1 in sample mode)."""

    samples: list[dict]
    events: list[SkipEvent]
    after: Position
    slot: int = -1


# A shard reader: (shard urls in reading order, event log) -> valid items in tar order.
RawReader = Callable[[list[str], EventLog], Iterable[dict]]


# --------------------------------------------------------------------------- rules
def epoch_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"jest-ds-shards-{seed}-{epoch}")


def permuted_shards(urls: list[str], rng: random.Random) -> list[str]:
    order = list(urls)
    rng.shuffle(order)
    return order


def slot_shards(urls: list[str], seed: int, epoch: int, slot: int, n_slots: int) -> list[str]:
    """The shards slot ``slot`` of ``n_slots`` reads in ``epoch`` (dealt round-robin)."""
    return permuted_shards(urls, epoch_rng(seed, epoch))[slot::n_slots]


def resolve_split(split: str, n_shards: int, n_slots: int) -> str:
    """``sample`` or ``shard`` for ``data.split`` (``auto``: shard when every slot gets a shard)."""
    if split == "sample":
        return "sample"
    if split == "shard":
        if n_shards < n_slots:
            raise ConfigError(
                f"config error: data.split = 'shard': {n_shards} shard(s) are fewer than ranks × workers "
                f"({n_slots}); use data.split=sample or fewer data.num_workers")
        return "shard"
    if split == "auto":
        return "shard" if n_shards >= n_slots else "sample"
    raise ConfigError(f"config error: data.split = {split!r}: must be auto, shard or sample")


def shuffled(items: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of ``size`` items: once full, each new item swaps with a random one,
    which is emitted; the rest is shuffled and emitted at the end."""
    buf: list[dict] = []
    for s in items:
        if len(buf) < size:
            buf.append(s)
            continue
        j = rng.randrange(len(buf))
        buf[j], s = s, buf[j]
        yield s
    rng.shuffle(buf)
    yield from buf


EpochItems = Callable[[int, EventLog], Iterator[dict]]  # epoch, event log -> that epoch's items in order


def global_epoch(urls: list[str], seed: int, shuffle_buffer: int, read: RawReader) -> EpochItems:
    """Epoch -> the global order of that epoch (sample mode)."""
    def items(epoch: int, log: EventLog) -> Iterator[dict]:
        rng = epoch_rng(seed, epoch)
        return shuffled(read(permuted_shards(urls, rng), log), shuffle_buffer, rng)
    return items


def slot_epoch(urls: list[str], seed: int, shuffle_buffer: int, read: RawReader, slot: int,
               n_slots: int) -> EpochItems:
    """Epoch -> the order of one slot's shards in that epoch (shard mode)."""
    def items(epoch: int, log: EventLog) -> Iterator[dict]:
        rng = random.Random(f"jest-ds-slot-{seed}-{epoch}-{slot}")
        return shuffled(read(slot_shards(urls, seed, epoch, slot, n_slots), log), shuffle_buffer, rng)
    return items


def stream(epoch_items: EpochItems, start: Position, *,
           max_empty_epochs: int, min_epoch_items: int = 1, what: str = "the training shards") -> Iterator[StreamItem]:
    """The infinite stream from ``start``: epochs one after another; items before ``start`` are
    skipped (their events dropped). An epoch with fewer than ``min_epoch_items`` items is an
    error, as are more than ``max_empty_epochs`` empty epochs in a row (events carry over an
    empty epoch to the next item)."""
    log = EventLog()
    epoch, skip, empty = start.epoch, start.offset, 0
    while True:
        n = 0
        for sample in epoch_items(epoch, log):
            events = log.take()
            if n >= skip:
                yield StreamItem(sample, Position(epoch, n), events)
            n += 1
        if n < skip:
            raise DataError(f"resume position (epoch {epoch}, item {skip}) is past the end of that epoch "
                             f"({n} items) in {what}: the training shards changed since the checkpoint")
        if n == 0:
            empty += 1
            if empty > max_empty_epochs:
                raise DataError(f"no valid sample in {what} for {empty} epoch(s) in a row "
                                 f"(skipped: {_summary(log.pending)})")
        else:
            empty = 0
            if n < min_epoch_items:
                raise DataError(f"{n} valid samples in {what} are too few for a super-batch of {min_epoch_items}")
        epoch, skip = epoch + 1, 0


def _summary(events: list[SkipEvent]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason, _ in events:
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def groups(items: Iterator[StreamItem], size: int) -> Iterator[tuple[list[StreamItem], Position]]:
    """Consecutive groups of ``size`` items of an infinite stream, each with the position after
    it (the next item's, read ahead)."""
    it = iter(items)
    nxt = next(it)
    while True:
        group = [nxt, *islice(it, size - 1)]
        nxt = next(it)
        yield group, nxt.position


# --------------------------------------------------------------------------- who produces what
def sample_mode_batches(urls: list[str], seed: int, shuffle_buffer: int, read: RawReader, start: Position, *,
                        rank: int, world_size: int, batch_size: int, worker: int,
                        n_workers: int) -> Iterator[OwnedBatch]:
    """The batches worker ``worker`` of ``n_workers`` of rank ``rank`` produces from ``start``:
    rank ``rank``'s share of every ``n_workers``-th super-batch (the ``worker``-th first)."""
    super_batch = batch_size * world_size
    items = stream(global_epoch(urls, seed, shuffle_buffer, read), start, max_empty_epochs=0,
                   min_epoch_items=super_batch)
    for k, (group, after) in enumerate(groups(items, super_batch)):
        if k % n_workers != worker:
            continue
        mine = group[rank::world_size]
        yield OwnedBatch([it.sample for it in mine], [e for it in mine for e in it.events], after)


def shard_mode_batches(urls: list[str], seed: int, shuffle_buffer: int, read: RawReader, start: Position, *,
                       slot: int, n_slots: int, batch_size: int) -> Iterator[OwnedBatch]:
    """The batches of one slot (rank × workers + worker) from ``start``."""
    items = stream(slot_epoch(urls, seed, shuffle_buffer, read, slot, n_slots), start,
                   max_empty_epochs=len(urls), what=f"the shards of slot {slot} of {n_slots}")
    for group, after in groups(items, batch_size):
        yield OwnedBatch([it.sample for it in group], [e for it in group for e in it.events], after, slot)

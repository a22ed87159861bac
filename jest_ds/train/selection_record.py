"""What selection chose: per-sample counts and last self-pair learnability, per shard, as training goes.

Each rank records the candidates it was offered (its own share of every super-batch), keyed by
(shard url, row): ``row`` is the sample's ordinal in its tar (`Batch.rows`), so a record lines up
with the shard without storing keys. Per sample:

* ``offered``      times it was a candidate;
* ``selected``     times it was trained on (IID: every time it was offered);
* ``learnability`` its self-pair learnability nll_learner(ii) − nll_reference(ii) the last time it
                   was offered (NaN when never scored: IID, or a score without both models);
* ``step``         the training step (1-based) of that last offer (0: never offered).

Files: ``<out_dir>/selection_record/rank_<r>/<shard name>-<hash>.npy``, one structured array per
shard (``RECORD_DTYPE``, one entry per row up to the highest row seen), and ``index.json`` mapping
each file to its shard url. They are rewritten at every checkpoint (which is also the end of a
run). The state itself goes into each checkpoint's rank file, so a run killed and resumed from a
checkpoint ends with the same record as one that was never interrupted.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from jest_ds.atomic import atomic_write
from jest_ds.data.shards import group_by_shard
from jest_ds.selection import Embeddings, diagonal_scores
from jest_ds.errors import DataError

RECORD_DIR = "selection_record"
INDEX = "index.json"
RECORD_DTYPE = np.dtype([("offered", "<i4"), ("selected", "<i4"), ("learnability", "<f4"), ("step", "<i4")])


def empty_record(rows: int) -> np.ndarray:
    rec = np.zeros(rows, dtype=RECORD_DTYPE)
    rec["learnability"] = np.nan
    return rec


def grown(rec: np.ndarray, rows: int) -> np.ndarray:
    """`rec` extended with empty entries to at least `rows` rows."""
    if rows <= rec.shape[0]:
        return rec
    out = empty_record(rows)
    out[:rec.shape[0]] = rec
    return out


def shard_file_name(url: str) -> str:
    """A file name for a shard's record: its stem plus a short hash of the full url (stems may repeat)."""
    stem = Path(url).name.removesuffix(".tar")
    return f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:10]}.npy"


def chosen_mask(n: int, local: torch.Tensor) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[local.cpu().numpy()] = True
    return mask


def source_counts(meta: list[dict], chosen: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sources (`meta['source']`, "?" when absent) in order of first appearance, how many
    candidates each offered and how many of them `chosen` (bool [n]) holds."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(m.get("source", "?"), len(index)) for m in meta), dtype=np.int64,
                        count=len(meta))
    offered = np.bincount(codes, minlength=len(index))
    picked = np.bincount(codes[chosen], minlength=len(index))
    return list(index), offered, picked


def acceptance(names: list[str], offered: np.ndarray, picked: np.ndarray) -> dict[str, float]:
    """Per source: its share of the chosen / its share of the candidates."""
    n_offered, n_picked = int(offered.sum()), max(int(picked.sum()), 1)
    return {f"sel/source_accept/{s}": (int(p) / n_picked) / (int(o) / n_offered)
            for s, o, p in zip(names, offered, picked)}


def source_acceptance(meta: list[dict], local: torch.Tensor) -> dict[str, float]:
    """Per `meta['source']` of this rank's candidates: its share of the chosen ones / its share of
    all of them (1 = no preference, 0 = never chosen)."""
    return acceptance(*source_counts(meta, chosen_mask(len(meta), local)))


def self_pair_learnability(learner: Embeddings | None, reference: Embeddings | None) -> np.ndarray | None:
    """nll_learner(ii) − nll_reference(ii) per candidate (float32), or None without both models."""
    if learner is None or reference is None:
        return None
    return diagonal_scores(learner, reference, "learnability", 1.0).float().cpu().numpy()


class SelectionRecord:
    def __init__(self, directory: str | Path, rank: int):
        self.directory = Path(directory) / f"rank_{rank}"
        self.shards: dict[str, np.ndarray] = {}
        self.last_learnability: np.ndarray | None = None  # the latest step's candidates (for histograms)
        self.last_chosen: np.ndarray | None = None

    def add(self, step: int, urls: list[str], rows: list[int], chosen: np.ndarray,
            learnability: np.ndarray | None) -> None:
        """One step's candidates of this rank: `chosen` bool [n], `learnability` float [n] or None."""
        if len(urls) != len(rows) or len(rows) != chosen.shape[0]:
            raise ValueError(f"selection record: {len(urls)} urls, {len(rows)} rows, {chosen.shape[0]} flags "
                             "(every candidate needs its shard url and row)")
        rows_arr = np.asarray(rows, dtype=np.int64)
        scores = np.full(len(rows), np.nan, np.float32) if learnability is None else learnability.astype(np.float32)
        for url, mine in zip(*group_by_shard(urls)):
            r = rows_arr[mine]
            rec = grown(self.shards.get(url, empty_record(0)), int(r.max()) + 1)
            np.add.at(rec["offered"], r, 1)
            np.add.at(rec["selected"], r, chosen[mine].astype(np.int32))
            rec["learnability"][r] = scores[mine]  # a row offered twice in one step: its later entry wins
            rec["step"][r] = step
            self.shards[url] = rec
        self.last_learnability, self.last_chosen = scores, chosen.astype(bool)

    def add_step(self, step: int, batch, local: torch.Tensor, learnability: np.ndarray | None) -> None:
        """Record a training step: `batch` holds this rank's candidates, `local` the chosen ones,
        `learnability` their `self_pair_learnability` (None without a learner and a reference)."""
        self.add(step, batch.urls, batch.rows, chosen_mask(len(batch.keys), local), learnability)

    def histograms(self) -> dict[str, np.ndarray]:
        """Self-pair learnability of the latest step's candidates: all of them and the chosen ones."""
        if self.last_learnability is None or np.isnan(self.last_learnability).all():
            return {}
        return {"sel/learnability_hist_all": self.last_learnability,
                "sel/learnability_hist_chosen": self.last_learnability[self.last_chosen]}

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {url: {f: torch.from_numpy(rec[f].copy()) for f in RECORD_DTYPE.names}
                for url, rec in self.shards.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.shards = {}
        for url, fields in state.items():
            rec = empty_record(fields["offered"].shape[0])
            for f in RECORD_DTYPE.names:
                rec[f] = fields[f].numpy()
            self.shards[url] = rec

    # ------------------------------------------------------------------ files
    def flush(self) -> None:
        """Write every shard's array and the index (atomically each); remove files of shards the
        record no longer holds (written by a run that was killed after its last checkpoint)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        index = {}
        for url, rec in self.shards.items():
            name = shard_file_name(url)
            atomic_write(self.directory / name, lambda fh, rec=rec: np.save(fh, rec))
            index[name] = url
        atomic_write(self.directory / INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
        for stale in self.directory.glob("*.npy"):
            if stale.name not in index:
                stale.unlink()


def merge_into(merged: dict[str, np.ndarray], url: str, rec: np.ndarray) -> None:
    """Fold one rank's record of a shard into `merged`: counts add up; the learnability and step come
    from the record that saw each sample last."""
    have = grown(merged.get(url, empty_record(0)), rec.shape[0])
    rec = grown(rec, have.shape[0])
    later = rec["step"] > have["step"]
    have["offered"] += rec["offered"]
    have["selected"] += rec["selected"]
    have["learnability"][later] = rec["learnability"][later]
    have["step"][later] = rec["step"][later]
    merged[url] = have


def load_record(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The record of a run, all ranks merged: shard url -> RECORD_DTYPE array. Counts add up; the
    learnability and step come from the rank that saw the sample last."""
    base = Path(run_dir) / RECORD_DIR
    ranks = sorted(p for p in base.glob("rank_*") if (p / INDEX).is_file())
    if not ranks:
        raise FileNotFoundError(f"{base}: no selection record (written by `jest-ds train` at checkpoints)")
    merged: dict[str, np.ndarray] = {}
    for rank_dir in ranks:
        for name, url in json.loads((rank_dir / INDEX).read_text()).items():
            path = rank_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {rank_dir / INDEX} but missing")
            rec = np.load(path)
            if rec.dtype != RECORD_DTYPE:
                raise DataError(f"{path}: not a selection record (dtype {rec.dtype})")
            merge_into(merged, url, rec)
    return merged

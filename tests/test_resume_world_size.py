"""Resuming at another world size, part by part (no process group; the end-to-end runs under
ZeRO-2 and ZeRO-3 are tests/integration/test_world_size_resume.py): the data position, the RNGs,
skip counts and the selection record of N ranks become rank r's of M, and what cannot move is
one line naming the checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jest_ds.data.loader import SuperBatchLoader
from jest_ds.errors import DataError
from jest_ds.train import checkpoint, reshard
from jest_ds.train.selection_record import RECORD_DIR, SelectionRecord, load_record
from synthetic_data import icon_shards, icon_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return icon_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards × 24 samples = 192 = 6 super-batches of 32."""
    d = tmp_path_factory.mktemp("ws") / "ds"
    icon_shards(d, n=192, per_shard=24)
    return d


def _loader(shards, tok, rank, world, workers, split="sample"):
    return SuperBatchLoader(shards, 32 // world, 8, tok, 12, seed=5, rank=rank, world_size=world,
                            num_workers=workers, split=split, shuffle_buffer=16)


def _steps(loaders, n):
    """n steps of a world of loaders: the global super-batch of each (item q from rank q % world)."""
    its = [iter(lo) for lo in loaders]
    out = []
    for _ in range(n):
        shares = [next(it).keys for it in its]
        out.append([shares[q % len(shares)][q // len(shares)] for q in range(sum(map(len, shares)))])
    for it in its:
        it.close()
    return out


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_the_data_stream_continues_at_another_world_size_with_workers(shards, tok, before, after):
    want = _steps([_loader(shards, tok, r, 1, 0) for r in range(1)], 6)  # one epoch on one rank, in-process
    old = [_loader(shards, tok, r, before, 2) for r in range(before)]
    got = _steps(old, 2)
    saved = [lo.state_dict() for lo in old]
    new = [_loader(shards, tok, r, after, 2) for r in range(after)]
    for r, lo in enumerate(new):
        lo.load_state_dict(lo.resharded(saved, r, after, "ckpt/step_00000002"))
    got += _steps(new, 4)
    assert got == want
    seen = [k for step in got for k in step]
    assert len(seen) == len(set(seen)) == 192  # each sample of the epoch exactly once


def test_a_shard_split_order_cannot_move_and_says_so_in_one_line(shards, tok):
    old = [_loader(shards, tok, r, 2, 1, split="shard") for r in range(2)]
    saved = [lo.state_dict() for lo in old]
    new = _loader(shards, tok, 0, 1, 1, split="shard")
    with pytest.raises(DataError) as e:
        new.resharded(saved, 0, 1, "run/checkpoints/step_00000002")
    msg = str(e.value)
    assert "\n" not in msg and "run/checkpoints/step_00000002" in msg and "data.split = sample" in msg, msg


def test_ranks_at_different_positions_are_refused(shards, tok):
    lo = _loader(shards, tok, 0, 1, 0)
    a = lo.state_dict()
    b = {**a, "position": [0, 32]}
    with pytest.raises(DataError, match="different data positions"):
        lo.resharded([a, b], 0, 1, "ckpt")


def test_rngs_selection_generator_continues_and_other_rngs_come_from_rank_r_mod_n():
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    states = []
    for r, g in enumerate(gens):
        torch.manual_seed(100 + r)
        states.append(checkpoint.RngStates(g).state_dict())
    for rank, world in ((0, 1), (0, 3), (1, 3), (2, 3)):
        mine = checkpoint.RngStates.resharded(states, rank, world, "ckpt")
        assert torch.equal(mine["selection"], states[0]["selection"])
        assert torch.equal(mine["torch"], states[rank % 2]["torch"])
    torch.randn(1, generator=gens[1])
    states[1] = {**states[1], "selection": gens[1].get_state()}
    with pytest.raises(DataError, match="ckpt: its ranks' selection RNG states differ"):
        checkpoint.RngStates.resharded(states, 0, 1, "ckpt")


def _record(tmp_path, rank, offers):
    rec = SelectionRecord(tmp_path / RECORD_DIR, rank)
    for step, urls, rows, chosen, scores in offers:
        rec.add(step, urls, rows, np.array(chosen), np.array(scores, dtype=np.float32))
    return rec


def test_skip_counts_and_selection_records_merge_onto_rank_zero(tmp_path):
    r0 = _record(tmp_path, 0, [(1, ["a.tar", "a.tar"], [0, 3], [True, False], [0.5, 0.1]),
                               (2, ["b.tar"], [1], [True], [0.7])])
    r1 = _record(tmp_path, 1, [(1, ["a.tar", "b.tar"], [1, 0], [False, True], [0.2, 0.3]),
                               (3, ["a.tar"], [0], [False], [0.9])])
    for r in (r0, r1):
        r.flush()
    part = checkpoint.OnRankZero(SelectionRecord(tmp_path / "new" / RECORD_DIR, 0), reshard.merge_selection_records, {})
    merged = part.resharded([r0.state_dict(), r1.state_dict()], 0, 1, "ckpt")
    assert part.resharded([r0.state_dict(), r1.state_dict()], 1, 2, "ckpt") == {}
    part.load_state_dict(merged)
    part.part.flush()
    want = load_record(tmp_path)  # the files of both ranks, merged as `jest-ds curate` reads them
    got = load_record(tmp_path / "new")
    assert got.keys() == want.keys() == {"a.tar", "b.tar"}
    for url in want:
        assert got[url].tobytes() == want[url].tobytes()
    assert got["a.tar"]["offered"].tolist() == [2, 1, 0, 1] and got["a.tar"]["step"][0] == 3
    assert reshard.sum_counts([{"bad_json": 2}, {"bad_json": 1, "no_image": 4}, {}]) == \
        {"bad_json": 3, "no_image": 4}


def test_a_part_that_cannot_move_is_one_line_naming_the_checkpoint():
    class Fixed:
        def state_dict(self):
            return 1

        def load_state_dict(self, state):
            pass

    states = checkpoint.States(per_rank={"fixed": Fixed()}, shared={})
    with pytest.raises(DataError) as e:
        states.resharded([{"fixed": 1}, {"fixed": 1}], "run/checkpoints/step_00000004", 0, 1)
    assert "\n" not in str(e.value) and "step_00000004" in str(e.value) and "'fixed'" in str(e.value)
    assert states.resharded([{}, {}], "ckpt", 0, 1) == {}  # a part the checkpoint predates: left to load


def test_the_saved_world_size_and_when_deepspeeds_universal_form_is_needed(tmp_path):
    ckpt = tmp_path / "step_00000002"
    ckpt.mkdir()
    for r in (0, 1):
        (ckpt / f"rank_{r}.pt").write_bytes(b"x")
    assert reshard.saved_world_size(ckpt) == 2
    assert not reshard.needs_universal(ckpt, 1)  # ZeRO-0: the optimizer state is whole
    (ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    assert reshard.needs_universal(ckpt, 1) and reshard.needs_universal(ckpt, 4)
    assert not reshard.needs_universal(ckpt, 2)
    (ckpt / "rank_0.pt").unlink()
    with pytest.raises(DataError, match=r"step_00000002: its rank files \(rank_1.pt\) are not rank_0.pt"):
        reshard.saved_world_size(ckpt)

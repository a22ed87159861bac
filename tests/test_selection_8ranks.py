"""Selection at 8 gloo ranks selects the same keys as world sizes 1 and 2 (docs/selection.md, the
per-rank quota's contract): quota=False is independent of the world size; quota=True at world W
equals the single-process `joint_sample(..., quota=W)`, each rank training b/W of its own."""
import math

import pytest
import torch
import torch.nn.functional as F

import dist_utils
from jest_ds.selection import Embeddings, joint_sample

B, D, b, N = 64, 8, 16, 2  # n = b/N = 8 draws per chunk: one per segment per chunk at W = 8
SEED = 5


def build():
    g = torch.Generator().manual_seed(SEED)
    n = lambda: F.normalize(torch.randn(B, D, generator=g), dim=-1)
    r_img = n()
    lrn = Embeddings(F.normalize(r_img + 0.5 * n(), dim=-1), n(), torch.tensor([math.log(10.0)]), torch.tensor([-10.0]))
    ref = Embeddings(r_img, F.normalize(n() + 0.8 * r_img, dim=-1), torch.tensor([math.log(8.0)]), torch.tensor([-9.0]))
    mask = torch.rand(B, generator=g) > 0.2
    return lrn, ref, mask


def keys(idx: torch.Tensor) -> list[str]:
    return [f"{i:09d}" for i in sorted(idx.tolist())]


def _rank_fn(rank, world):
    from jest_ds.selection.distributed import distributed_joint_sample

    lrn, ref, mask = build()
    local = lambda e: Embeddings(e.img.chunk(world)[rank], e.txt.chunk(world)[rank], e.log_scale, e.bias)
    out = {}
    for quota in (True, False):
        for masked in (False, True):
            out[(quota, masked)] = distributed_joint_sample(
                local(lrn), local(ref), b, N, "learnability", 10.0, torch.Generator().manual_seed(11), quota=quota,
                local_mask=mask.chunk(world)[rank] if masked else None)
    return out


@pytest.fixture(scope="module")
def by_world():
    # a longer join: 8 ranks on a 2-core machine shared with other jobs can take minutes to tear down
    return {w: dist_utils.run_ranks(_rank_fn, w, join_timeout=900) for w in (2, 8)}


def single(quota, masked):
    lrn, ref, mask = build()
    return joint_sample(lrn, ref, b, N, "learnability", 10.0, torch.Generator().manual_seed(11),
                        mask if masked else None, quota)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
def test_without_quota_every_world_size_selects_the_same_keys(by_world, masked):
    want = keys(single(None, masked))
    for w, ranks in by_world.items():
        for rank, out in enumerate(ranks):
            glob, loc = out[(False, masked)]
            assert keys(glob) == want, (w, rank)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
def test_quota_at_world_w_is_the_single_process_quota_w(by_world, masked):
    for w, ranks in by_world.items():
        want = single(w, masked)
        seg = B // w
        union = []
        for rank, out in enumerate(ranks):
            glob, loc = out[(True, masked)]
            assert torch.equal(glob, want), (w, rank)
            assert loc.numel() == b // w  # each rank trains b/W of its own candidates
            assert torch.equal(loc + rank * seg, want[(want >= rank * seg) & (want < (rank + 1) * seg)])
            union += (loc + rank * seg).tolist()
        assert keys(torch.tensor(union)) == keys(want)
    # the 8-rank selection, replayed in one process, is the same keys (what resume at another
    # world size relies on: quota=W is a property of the selection, not of the process layout)
    assert keys(single(8, masked)) == keys(by_world[8][0][(True, masked)][0])

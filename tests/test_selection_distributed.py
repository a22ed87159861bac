"""2-process (gloo) distributed selection equals the single-process sampler."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from jest_ds.selection import Embeddings, joint_sample
from jest_ds.train.distributed import free_port

WORLD = 2
# (B, d, batch_size, n_chunks, method, gain, loss, dtype, masked)
CASES = [
    (64, 16, 16, 4, "learnability", 10.0, "sigmoid", torch.float32, False),
    (96, 32, 32, 8, "learnability", 100.0, "sigmoid", torch.bfloat16, True),
    (48, 8, 8, 2, "hard_learner", 1.0, "sigmoid", torch.float32, True),
    (80, 16, 16, 4, "easy_reference", 10.0, "softmax", torch.float32, False),
    (64, 16, 32, 16, "learnability", 10.0, "softmax", torch.bfloat16, False),
]


def build(case_id):
    B, d, _, _, _, _, _, dtype, masked = CASES[case_id]
    g = torch.Generator().manual_seed(case_id)
    n = lambda: F.normalize(torch.randn(B, d, generator=g), dim=-1)
    r_img = n()
    lrn = Embeddings(F.normalize(r_img + 0.5 * n(), dim=-1).to(dtype), n().to(dtype),
                     torch.tensor([math.log(10.0)]), torch.tensor([-10.0]))
    ref = Embeddings(r_img.to(dtype), F.normalize(n() + 0.8 * r_img, dim=-1).to(dtype),
                     torch.tensor([math.log(8.0)]), torch.tensor([-9.0]))
    mask = (torch.rand(B, generator=g) > 0.25) if masked else None
    return lrn, ref, mask


def local(e, rank):
    sl = lambda x: x.chunk(WORLD)[rank]
    return Embeddings(sl(e.img), sl(e.txt), e.log_scale, e.bias)


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from jest_ds.selection.distributed import distributed_joint_sample
    results = {}
    try:
        for cid, (B, d, b, N, method, gain, loss, dtype, masked) in enumerate(CASES):
            lrn, ref, mask = build(cid)
            for quota in (True, False):
                got = distributed_joint_sample(
                    local(lrn, rank), local(ref, rank) if method != "hard_learner" else None, b, N, method, gain,
                    torch.Generator().manual_seed(11 + cid), quota=quota,
                    local_mask=None if mask is None else mask.chunk(WORLD)[rank], loss=loss)
                results[(cid, quota)] = got
        dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("cid", range(len(CASES)))
@pytest.mark.parametrize("quota", [True, False])
def test_distributed_equals_single_process(dist_results, cid, quota):
    B, d, b, N, method, gain, loss, dtype, masked = CASES[cid]
    lrn, ref, mask = build(cid)
    want = joint_sample(lrn, ref if method != "hard_learner" else None, b, N, method, gain,
                        torch.Generator().manual_seed(11 + cid), mask, WORLD if quota else None, loss=loss)
    half = B // WORLD
    for rank in range(WORLD):
        glob, loc = dist_results[rank][(cid, quota)]
        assert torch.equal(glob, want)
        mine = want[(want >= rank * half) & (want < (rank + 1) * half)] - rank * half
        assert torch.equal(loc, mine)
        if quota:
            assert loc.numel() == b // WORLD

"""Shared set-up of the integration tests: a synthetic dataset, a reference model trained on its
curated part, the reference-embedding cache for its pool, and a JEST config factory.
All marked slow; see itest_harness.py for how ranks are started."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import itest_harness as H


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def itest_env(tmp_path_factory):
    """(dataset root, reference export dir, cache path); ~10 s."""
    H.preload()
    from synthetic_data import make_dataset, tiny_config

    base = tmp_path_factory.mktemp("itest")
    root = make_dataset(base / "data")
    ref_cfg = tiny_config(root, base / "reference", data={"train_part": "curated"},
                          train={"steps": 4, "eval_every": 0, "zero_stage": 0})
    t0 = time.monotonic()
    H.run_workers(ref_cfg, world=1, export=True, timeout=120)
    cache = base / "pool_reference_cache"
    H.in_child(H.build_cache, str(base / "reference" / "export"), str(root / "pool"), str(cache),
               str(root / "tokenizer.json"))
    print(f"[itest] reference + cache: {time.monotonic() - t0:.1f} s")
    return root, base / "reference" / "export", cache


@pytest.fixture(scope="session")
def jest_config(itest_env):
    """jest_config(out_dir, data=None, **train_overrides) -> config dict of a tiny 2-rank JEST run:
    b = 32 of B = 64 candidates (32 per rank), 4 chunks, learnability scores from the cache, fp32."""
    root, ref, cache = itest_env
    from synthetic_data import tiny_config

    def make(out_dir, data=None, **train):
        t = {"steps": 4, "eval_every": 0, "zero_stage": 1}
        t.update(train)
        return tiny_config(root, out_dir, data={"reference_cache": str(cache), **(data or {})},
                           selection={"method": "jest", "score": "learnability", "reference": str(ref),
                                      "filter_ratio": 0.5, "n_chunks": 4, "gain": 1.0},
                           train=t, eval={"few_shot": 2, "sets": ["colours"]})

    return make


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """(6) Nothing a test's runs create may stay in /dev/shm."""
    before = set(H.shm_leftovers())
    yield
    new = sorted(set(H.shm_leftovers()) - before)
    for f in new:
        os.unlink(f)
    assert not new, f"left in /dev/shm: {new}"

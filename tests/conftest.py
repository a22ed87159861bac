import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    from synthetic_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synthetic") / "data")


@pytest.fixture(scope="session")
def short_reference(synthetic_root, tmp_path_factory):
    """An exported reference trained 4 steps on the synthetic curated part (fp32): enough for tests
    that need a reference to run, not to select well (tests/test_train.py trains a real one)."""
    from synthetic_data import tiny_config
    from jest_ds.config import config_from_dict
    from jest_ds.train.trainer import train

    out = tmp_path_factory.mktemp("short_reference")
    cfg = tiny_config(synthetic_root, out, data={"root": str(synthetic_root), "train_part": "curated"},
                      train={"steps": 4, "eval_every": 0})
    train(config_from_dict(cfg), show_progress=False)
    return out / "export"

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    from synthetic_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synthetic") / "data")

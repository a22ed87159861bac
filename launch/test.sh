#!/usr/bin/env bash
# The test suite on a fresh machine: set-up, then pytest (unit tests, 2-process DeepSpeed tests,
# launcher integration tests, one real-data build test). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO"
bash tools/setup_env.sh
exec "${JEST_DS_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"

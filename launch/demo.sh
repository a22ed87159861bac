#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then `jest-ds demo` (build the embedded dataset if absent,
# train the reference on the curated part, cache its embeddings, train IID vs JEST vs Flexi-JEST and
# the curated-only baseline for the same number of iterations, print the speedup tables). Extra arguments go to `jest-ds demo`
# (e.g. --scale gpu, --steps 1000, --methods iid,jest,flexi,independent).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO"
bash tools/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
exec "${JEST_DS_VENV:-.venv}/bin/jest-ds" demo "$@"

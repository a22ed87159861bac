#!/usr/bin/env bash
# Usage: launch/single_gpu.sh [CONFIG] [--set section.field=value ...] [--resume latest] [other `jest-ds train` flags]
#
# One process (one GPU, or the CPU when there is none) through the deepspeed launcher.
# CONFIG (a YAML path or a packaged config name, `jest-ds config list`) defaults to tiny_iid (a smoke
# run). Everything after CONFIG is passed to `jest-ds train` unchanged, e.g.
#   launch/single_gpu.sh tiny_jest --set train.steps=20 --set train.zero_stage=3
# Env: MASTER_PORT (default 29500), OMP_NUM_THREADS (default 1 per process),
#      JEST_DS_PLAIN_PYTHON=1 runs `python launch/train.py` without the deepspeed launcher.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CONFIG="${1:-tiny_iid}"
[[ $# -gt 0 ]] && shift
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PYTHON="${PYTHON:-python}"

if [[ "${JEST_DS_PLAIN_PYTHON:-0}" == "1" ]]; then
    exec "$PYTHON" "$REPO/launch/train.py" --config "$CONFIG" "$@"
fi
exec "${DEEPSPEED:-deepspeed}" --num_gpus 1 --master_addr 127.0.0.1 --master_port "${MASTER_PORT:-29500}" \
    "$REPO/launch/train.py" --config "$CONFIG" "$@"

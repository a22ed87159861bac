#!/usr/bin/env bash
# Usage: launch/single_node.sh NUM_GPUS CONFIG [--set section.field=value ...] [--resume latest] [...]
#
# NUM_GPUS data-parallel ranks on this node through the deepspeed launcher, e.g.
#   launch/single_node.sh 8 tiny_jest --set train.zero_stage=3
# On a machine without GPUs the ranks run on the CPU (gloo); the launcher then also needs
# LOCAL_SIZE=NUM_GPUS, which this script sets.
# Env: MASTER_PORT (default 29500), OMP_NUM_THREADS (default: cores / NUM_GPUS, at least 1).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_args 2 "$@"
NUM_GPUS="$1"
CONFIG="$2"
shift 2
threads_per_rank "$NUM_GPUS"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export LOCAL_SIZE="$NUM_GPUS"
fi
exec "${DEEPSPEED:-deepspeed}" --num_gpus "$NUM_GPUS" --master_addr 127.0.0.1 --master_port "${MASTER_PORT:-29500}" \
    "$REPO/launch/train.py" --config "$CONFIG" "$@"

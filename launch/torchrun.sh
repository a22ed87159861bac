#!/usr/bin/env bash
# Usage: launch/torchrun.sh NPROC CONFIG [--set section.field=value ...] [--resume latest] [...]
#
# NPROC ranks on this node with torchrun (same script as the deepspeed launcher; torchrun sets
# OMP_NUM_THREADS=1 and does not set LOCAL_SIZE, so DeepSpeed makes no /dev/shm buffers). Multi-node:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node1 launch/torchrun.sh 8 CONFIG ...   (on every node, its NODE_RANK)
# Env: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_args 2 "$@"
NPROC="$1"
CONFIG="$2"
shift 2
exec "${TORCHRUN:-torchrun}" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    "$REPO/launch/train.py" --config "$CONFIG" "$@"

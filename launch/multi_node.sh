#!/usr/bin/env bash
# Usage: launch/multi_node.sh HOSTFILE CONFIG [--set section.field=value ...] [--resume latest] [...]
#
# Runs on the first host of HOSTFILE (format: launch/hostfile.example, one `host slots=N` a line).
# The deepspeed launcher starts N ranks on every host (pdsh over ssh; a single-host file takes the
# local path, no ssh). Everything after CONFIG goes to `jest-ds train` unchanged.
# Env:
#   MASTER_ADDR      rendezvous address (default: the first host of HOSTFILE; 127.0.0.1 if that is localhost)
#   MASTER_PORT      rendezvous port (default 29500)
#   OMP_NUM_THREADS  threads per rank (default: cores / slots of the first host, at least 1);
#                    the deepspeed launcher does not set it
#   NO_SSH_CHECK=1   pass --no_ssh_check (machines without ssh, e.g. a one-host file in CI)
#   DS_EXTRA_ARGS    more deepspeed launcher flags, e.g. "--include node1:0,1 --launcher openmpi"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_args 2 "$@"
HOSTFILE="$1"
CONFIG="$2"
shift 2
[[ -f "$HOSTFILE" ]] || { echo "multi_node.sh: no hostfile $HOSTFILE" >&2; exit 2; }

FIRST_LINE="$(grep -v '^\s*#' "$HOSTFILE" | grep -v '^\s*$' | head -n 1)"
FIRST_HOST="$(awk '{print $1}' <<<"$FIRST_LINE")"
SLOTS="$(sed -n 's/.*slots=\([0-9]*\).*/\1/p' <<<"$FIRST_LINE")"
SLOTS="${SLOTS:-1}"
if [[ -z "${MASTER_ADDR:-}" ]]; then
    if [[ "$FIRST_HOST" == "localhost" ]]; then MASTER_ADDR=127.0.0.1; else MASTER_ADDR="$FIRST_HOST"; fi
fi
threads_per_rank "$SLOTS"

ARGS=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
if [[ "${NO_SSH_CHECK:-0}" == "1" ]]; then
    ARGS+=(--no_ssh_check)
fi
# shellcheck disable=SC2206
EXTRA=(${DS_EXTRA_ARGS:-})
exec "${DEEPSPEED:-deepspeed}" "${ARGS[@]}" "${EXTRA[@]}" "$REPO/launch/train.py" --config "$CONFIG" "$@"

# Sourced by the launch scripts (not run on its own): strict mode, the repository paths, and the
# helpers every launcher needs.
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#   need_args 2 "$@"          # fewer arguments: print the calling script's header comment, exit 2
#   threads_per_rank 8        # OMP_NUM_THREADS default: cores / ranks per node, at least 1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # launch/
REPO="$(dirname "$HERE")"

need_args() {
    local min="$1"
    shift
    if [[ $# -lt "$min" ]]; then
        awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0" >&2
        exit 2
    fi
}

# threads_per_rank RANKS [CORES]: export OMP_NUM_THREADS = CORES / RANKS (at least 1) unless it is
# set already (the deepspeed launcher does not set it). CORES defaults to this machine's.
threads_per_rank() {
    local ranks="$1" cores="${2:-$(nproc)}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}"
}

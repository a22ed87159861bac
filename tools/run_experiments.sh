#!/usr/bin/env bash
# The experiments behind docs/results.md, on the embedded dataset (one reference for all runs):
#   1. the demo's methods and every baseline, SEEDS seeds each (IID on the pool, IID on the curated
#      set, IID on pool + curated, JEST, Flexi-JEST, independent selection; f = 0.8);
#   2. seed-0 sweeps: gain, n_chunks, filter ratio (JEST and independent), scoring variants,
#      Flexi-JEST without two-resolution training, and a second reference (JEST vs JEST++);
#   3. the speedup reports and the paper-findings report over all of them.
# Usage: bash tools/run_experiments.sh [OUT=runs/benchmark] [SEEDS=3] [STEPS=400]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/benchmark}"
SEEDS="${2:-3}"
STEPS="${3:-400}"
PY="${PYTHON:-.venv/bin/python}"
demo() { "$PY" -m jest_ds.cli demo --out "$OUT" --steps "$STEPS" "$@"; }

demo --methods iid,jest,flexi,curated,pool_curated,independent --seeds "$SEEDS"
REF=(--reference "$OUT/reference/export" --reference-cache "$OUT/reference_cache")
S0=(--seeds 1 --seed 0)  # sweeps: seed 0 only (run directories without a seed suffix)
for g in 1 100; do demo --methods jest --gain "$g" --tag "_g$g" "${REF[@]}" "${S0[@]}"; done
for c in 4 64; do demo --methods jest --set "selection.n_chunks=$c" --tag "_c$c" "${REF[@]}" "${S0[@]}"; done
for f in 0.5 0.9; do demo --methods jest,independent --filter-ratio "$f" --tag "_f$f" "${REF[@]}" "${S0[@]}"; done
for s in easy_reference hard_learner; do
  demo --methods jest --set "selection.score=$s" --tag "_$s" "${REF[@]}" "${S0[@]}"
done
demo --methods flexi --set selection.flexi_low_res_fraction=0.0 --tag _lowres0 "${REF[@]}" "${S0[@]}"

# a second reference: the same model and curated set, selected on held-out R@5 instead of the
# validation loss (it trains longer), for the reference-quality table
"$PY" -m jest_ds.cli train --config tiny_reference --set "train.out_dir=$OUT/reference_r5" \
  --set eval.best_metric=eval/icon_val/headline --set eval.best_mode=max --set eval.patience=6 \
  --set train.eval_every=100 --set train.steps=1500
demo --methods jest --tag _ref_r5 --reference "$OUT/reference_r5/export" \
  --reference-cache "$OUT/reference_r5_cache" "${S0[@]}"

RUNS=()  # every method run (the references are read through the runs' configs)
for d in "$OUT"/*/; do
  [[ -f "$d/metrics.jsonl" && "$(basename "$d")" != reference* ]] && RUNS+=("$d")
done
"$PY" tools/paper_findings.py "${RUNS[@]}" --out "$OUT/findings"
"$PY" tools/paper_findings.py "${RUNS[@]}" --out "$OUT/findings_r5" --metric eval/icon_retrieval/headline

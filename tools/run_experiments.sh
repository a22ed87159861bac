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
LEARNER="$OUT/jest_s0"; [[ -d "$LEARNER" ]] || LEARNER="$OUT/jest"  # run names carry _s<seed> with SEEDS > 1
"$PY" tools/selection_diagnostics.py --learner "$LEARNER/export" --reference "$OUT/reference/export" \
  --data-root data/embedded --B 640 --b 128 --superbatches 3 --draws 50 --gibbs-sweeps 200 \
  --png "$OUT/fig2_real_scores.png" --out "$OUT/fig2_real_scores.json"  # Fig. 2 on real scores
for g in 1 100; do demo --methods jest --gain "$g" --tag "_g$g" "${REF[@]}" "${S0[@]}"; done
for c in 4 64; do demo --methods jest --set "selection.n_chunks=$c" --tag "_c$c" "${REF[@]}" "${S0[@]}"; done
for f in 0.5 0.9; do demo --methods jest,independent --filter-ratio "$f" --tag "_f$f" "${REF[@]}" "${S0[@]}"; done
for s in easy_reference hard_learner; do
  demo --methods jest --set "selection.score=$s" --tag "_$s" "${REF[@]}" "${S0[@]}"
done
demo --methods flexi --set selection.flexi_low_res_fraction=0.0 --tag _lowres0 "${REF[@]}" "${S0[@]}"

# a second reference for the reference-quality table (JEST vs JEST++): the same model and curated
# set, selected on the validation loss instead of R@5 (it stops after ~350 steps)
"$PY" -m jest_ds.cli train --config tiny_reference --set "train.out_dir=$OUT/reference_valloss" \
  --set eval.best_metric=eval/icon_val/val_loss_batch --set eval.best_mode=min --set eval.patience=4 \
  --set train.eval_every=50 --set train.steps=3000
demo --methods jest --tag _ref_valloss --reference "$OUT/reference_valloss/export" \
  --reference-cache "$OUT/reference_valloss_cache" "${S0[@]}"

RUNS=()  # every method run (the references are read through the runs' configs)
for d in "$OUT"/*/; do
  [[ -f "$d/metrics.jsonl" && "$(basename "$d")" != reference* ]] && RUNS+=("$d")
done
"$PY" tools/paper_findings.py "${RUNS[@]}" --out "$OUT/findings"
"$PY" tools/paper_findings.py "${RUNS[@]}" --out "$OUT/findings_r5" --metric eval/icon_retrieval/headline

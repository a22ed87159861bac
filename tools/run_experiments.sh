#!/usr/bin/env bash
# The experiments behind docs/results.md ("Benchmark v3"), on the embedded dataset, one reference for
# every run (trained by the first demo call, then reused):
#   1. IID on the pool, JEST, Flexi-JEST (f = 0.8), IID on the curated set alone, independent selection
#      and IID on pool + curated, SEEDS seeds each, at the benchmark's budget (`jest-ds demo --full`:
#      2,000 iterations, evaluated every 100);
#   2. at the same budget: JEST and independent selection at filter ratio 0.5 (seed 0); the paper's scoring variants, JEST scored by
#      easy reference (SEEDS seeds) and by hard learner (seed 0); JEST steered by a second reference kept at
#      its lowest validation loss (reference quality, the paper's JEST vs JEST++; seed 0); IID and JEST on
#      half the pool (the pool-size lever; seed 0); and, SEEDS seeds, Flexi-JEST scoring at the coarse patch
#      and training every example at the base patch (`selection.flexi_low_res_fraction=0`);
#   3. IID trained to its plateau: IID on the pool for LONG iterations (its own cosine schedule,
#      evaluated every 200), SEEDS seeds;
#   4. the demo's own budget (1,000 iterations), seed 0, into a directory of its own;
#   5. the broad curated-set variant: a dataset whose target is every Iconify set of the pool (so the
#      curated set is a clean sample of the pool's whole distribution), its own reference, IID and JEST
#      at the demo's budget, seed 0;
#   6. the reports: the headline (tools/benchmark_report.py) for the main runs, the baselines, the
#      plateau, Flexi-JEST's variant, half the pool, the demo budget and the broad variant; the diagnostic
#      loss table (tools/speedup_report.py) and the paper-findings report on R@5 (tools/paper_findings.py).
# Usage: bash tools/run_experiments.sh [OUT=runs/benchmark] [SEEDS=3] [LONG=4000]
# In docs/results.md the runs of steps 1-3 and 5 were made two at a time (OMP_NUM_THREADS=1 each) from a
# git worktree at commit 06ce4eb; step 4 is the default `bash launch/demo.sh` of a fresh clone.
# Iteration and FLOP counts are exact; seeds fix the rest (up to float rounding with the thread count).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/benchmark}"
SEEDS="${2:-3}"
LONG="${3:-4000}"
PY="${PYTHON:-.venv/bin/python}"
demo() { "$PY" -m jest_ds.cli demo "$@"; }

for ((s = 0; s < SEEDS; s++)); do  # seed by seed, so that a partial run still has whole seeds
  demo --out "$OUT" --full --methods iid,jest,flexi,curated,independent,pool_curated --seed "$s" --tag "_s$s"
done
REF=(--reference "$OUT/reference/export" --reference-cache "$OUT/reference_cache")
demo --out "$OUT" --full --methods flexi --seed 0 --tag _lr0_s0 --set selection.flexi_low_res_fraction=0 "${REF[@]}"
demo --out "$OUT" --full --methods jest,independent --seed 0 --tag _f0.5_s0 --filter-ratio 0.5 "${REF[@]}"
# the scoring variants (the paper's learnability against easy reference, SEEDS seeds, and hard learner, seed 0)
for ((s = 0; s < SEEDS; s++)); do
  demo --out "$OUT" --full --methods jest --seed "$s" --tag "_easyref_s$s" --set selection.score=easy_reference "${REF[@]}"
done
demo --out "$OUT" --full --methods jest --seed 0 --tag _hardlearner_s0 --set selection.score=hard_learner "${REF[@]}"
# reference quality (JEST vs JEST++): a second reference, the same curated set, model and schedule, kept at its
# lowest validation loss instead of its best validation R@5; its pool cache; JEST seed 0 steered by it
"$PY" -m jest_ds.cli train --config tiny_reference --set train.out_dir="$OUT/reference_valloss" \
  --set eval.best_metric=eval/icon_val/val_loss_batch --set eval.best_mode=min --set eval.patience=4 --set train.eval_every=50
"$PY" -m jest_ds.cli cache-ref --reference "$OUT/reference_valloss/export" --part pool --out "$OUT/reference_valloss_cache"
demo --out "$OUT" --full --methods jest --seed 0 --tag _refvalloss_s0 \
  --reference "$OUT/reference_valloss/export" --reference-cache "$OUT/reference_valloss_cache"
# the pool-size lever: IID and JEST on half the pool (shards 0-3 of 8), seed 0
HALF=data/embedded/pool/pool-{000000..000003}.tar
demo --out "$OUT" --full --methods iid,jest --seed 0 --tag _halfpool_s0 --set "data.train_shards=$HALF" "${REF[@]}"
for ((s = 1; s < SEEDS; s++)); do
  demo --out "$OUT" --full --methods flexi --seed "$s" --tag "_lr0_s$s" --set selection.flexi_low_res_fraction=0 "${REF[@]}"
done
for ((s = 0; s < SEEDS; s++)); do  # IID trained to its plateau
  demo --out "$OUT" --methods iid --seed "$s" --tag "_long_s$s" --steps "$LONG" --eval-every 200 "${REF[@]}"
done
demo --out "$OUT/demo_budget" --methods iid,jest,flexi,curated --seed 0 "${REF[@]}"
BROAD_SETS=$("$PY" -c "import json, sys; print(','.join(sorted(json.load(open(sys.argv[1]))['available']['iconify_sets'])))" \
  data/embedded/manifest.json)
[ -f "$OUT/broad_data/manifest.json" ] || "$PY" -m jest_ds.cli data build --root "$OUT/broad_data" --target-sets "$BROAD_SETS"
demo --out "$OUT/broad" --data-root "$OUT/broad_data" --methods iid,jest --seed 0

"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,curated,independent,jest_easyref}_s* --out "$OUT/report_main" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,curated,pool_curated}_s* \
  --out "$OUT/report_baselines" --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,flexi_lr0}_s* \
  --out "$OUT/report_flexi_lr0" --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid_long,jest,flexi,curated,jest_easyref}_s* --out "$OUT/report_long" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest}_halfpool_s0 --out "$OUT/report_halfpool" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/demo_budget/{iid,jest,flexi,curated} --out "$OUT/report_demo_budget" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/broad/{iid,jest} --out "$OUT/report_broad" \
  --reference "$OUT/broad/reference" --reference-cache "$OUT/broad/reference_cache"
"$PY" tools/speedup_report.py "$OUT"/{iid,jest,flexi,curated}_s* --metric eval/icon_retrieval/val_loss_batch \
  --out "$OUT/report_diagnostic_loss"
"$PY" tools/paper_findings.py "$OUT"/{iid,jest,flexi,flexi_lr0,curated,independent,pool_curated}_s* \
  "$OUT"/jest_easyref_s* "$OUT"/jest_{f0.5,hardlearner,refvalloss}_s0 "$OUT"/independent_f0.5_s0 --out "$OUT/findings"

#!/usr/bin/env bash
# The experiments behind docs/results.md ("Benchmark v3"), on the embedded dataset, one reference for
# every run (trained by the first demo call, then reused):
#   1. IID on the pool, JEST, Flexi-JEST (f = 0.8), IID on the curated set alone, independent selection
#      and IID on pool + curated, SEEDS seeds each, at the benchmark's budget (`jest-ds demo --full`:
#      2,000 iterations, evaluated every 100);
#   2. seed 0 only, at the same budget: Flexi-JEST scoring at the coarse patch and training every example
#      at the base patch (`selection.flexi_low_res_fraction=0`), and JEST at filter ratio 0.5;
#   3. IID trained to its plateau: IID on the pool for LONG iterations (its own cosine schedule,
#      evaluated every 200), seed 0;
#   4. the demo's own budget (1,000 iterations), seed 0, into a directory of its own;
#   5. the broad curated-set variant: a dataset whose target is every Iconify set of the pool (so the
#      curated set is a clean sample of the pool's whole distribution), its own reference, IID and JEST
#      at the demo's budget, seed 0;
#   6. the reports: the headline (tools/benchmark_report.py) for the main runs, the baselines, the
#      plateau, the demo budget and the broad variant; the diagnostic loss table (tools/speedup_report.py)
#      and the paper-findings report on R@5 (tools/paper_findings.py).
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
demo --out "$OUT" --full --methods jest --seed 0 --tag _f0.5_s0 --filter-ratio 0.5 "${REF[@]}"
demo --out "$OUT" --methods iid --seed 0 --tag _long_s0 --steps "$LONG" --eval-every 200 "${REF[@]}"
demo --out "$OUT/demo_budget" --methods iid,jest,flexi,curated --seed 0 "${REF[@]}"
BROAD_SETS=$("$PY" -c "import json, sys; print(','.join(sorted(json.load(open(sys.argv[1]))['available']['iconify_sets'])))" \
  data/embedded/manifest.json)
[ -f "$OUT/broad_data/manifest.json" ] || "$PY" -m jest_ds.cli data build --root "$OUT/broad_data" --target-sets "$BROAD_SETS"
demo --out "$OUT/broad" --data-root "$OUT/broad_data" --methods iid,jest --seed 0

"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,curated,independent}_s* --out "$OUT/report_main" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,curated,pool_curated}_s* \
  --out "$OUT/report_baselines" --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,flexi_lr0}_s0 \
  --out "$OUT/report_flexi_lr0" --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/iid_long_s0 "$OUT"/{jest,flexi,curated}_s0 --out "$OUT/report_long" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/demo_budget/{iid,jest,flexi,curated} --out "$OUT/report_demo_budget" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/broad/{iid,jest} --out "$OUT/report_broad" \
  --reference "$OUT/broad/reference" --reference-cache "$OUT/broad/reference_cache"
"$PY" tools/speedup_report.py "$OUT"/{iid,jest,flexi,curated}_s* --metric eval/icon_retrieval/val_loss_batch \
  --out "$OUT/report_diagnostic_loss"
"$PY" tools/paper_findings.py "$OUT"/{iid,jest,flexi,flexi_lr0,curated,independent,pool_curated}_s* \
  "$OUT"/jest_f0.5_s0 --out "$OUT/findings"

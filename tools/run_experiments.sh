#!/usr/bin/env bash
# The experiments behind docs/results.md ("Benchmark v3"), on the embedded dataset, one reference for
# every run (trained by the first demo call, then reused):
#   1. IID on the pool, JEST, Flexi-JEST (f = 0.8) and IID on the curated set alone, SEEDS seeds each,
#      at the benchmark's budget (`jest-ds demo --full`: 2,000 iterations, evaluated every 100);
#   2. seed 0 only: independent selection and IID on pool + curated at the same budget;
#   3. the longer horizon (the lever of "what limits the speedup"): IID on the pool for LONG iterations
#      (its own cosine schedule), seed 0;
#   4. the demo's own budget (1,000 iterations), seed 0, into a directory of its own;
#   5. the reports: the headline (tools/benchmark_report.py), the diagnostic loss table
#      (tools/speedup_report.py) and the paper-findings report on R@5 (tools/paper_findings.py).
# Usage: bash tools/run_experiments.sh [OUT=runs/benchmark] [SEEDS=3] [LONG=3000]
# In docs/results.md the runs of steps 1-3 were made with two runs at a time (OMP_NUM_THREADS=1 each);
# the numbers do not depend on that (iteration and FLOP counts are exact, seeds fix the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/benchmark}"
SEEDS="${2:-3}"
LONG="${3:-3000}"
PY="${PYTHON:-.venv/bin/python}"
demo() { "$PY" -m jest_ds.cli demo "$@"; }

for ((s = 0; s < SEEDS; s++)); do  # seed by seed, so that a partial run still has whole seeds
  demo --out "$OUT" --full --methods iid,jest,flexi,curated --seed "$s" --tag "_s$s"
done
REF=(--reference "$OUT/reference/export" --reference-cache "$OUT/reference_cache")
demo --out "$OUT" --full --methods pool_curated --seed 0 --tag _s0 --eval-every 200 "${REF[@]}"
demo --out "$OUT" --methods iid --seed 0 --tag _long_s0 --steps "$LONG" --eval-every 500 "${REF[@]}"
demo --out "$OUT/demo_budget" --methods iid,jest,flexi,curated --seed 0 "${REF[@]}"

"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,curated}_s* --out "$OUT/report_main" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/{iid,jest,flexi,curated,independent,pool_curated}_s0 \
  --out "$OUT/report_baselines" --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/benchmark_report.py "$OUT"/iid_long_s0 "$OUT"/{jest,flexi}_s0 --out "$OUT/report_long" \
  --reference "$OUT/reference" --reference-cache "$OUT/reference_cache"
"$PY" tools/speedup_report.py "$OUT"/{iid,jest,flexi,curated}_s* --metric eval/icon_retrieval/val_loss_batch \
  --out "$OUT/report_diagnostic_loss"
"$PY" tools/paper_findings.py "$OUT"/{iid,jest,flexi,curated,independent,pool_curated}_s* --out "$OUT/findings"

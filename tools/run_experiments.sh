#!/usr/bin/env bash
# The experiment behind docs/results.md: one reference, then IID / JEST / Flexi-JEST / independent
# at f = 0.8 and JEST at f = 0.5 and 0.9, all for the same number of iterations, then the speedup
# report over all of them. Usage: bash tools/run_experiments.sh [OUT=runs/experiments] [STEPS=400]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/experiments}"
STEPS="${2:-400}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m jest_ds.cli demo --out "$OUT" --steps "$STEPS" --methods iid,jest,flexi,independent
REF=(--reference "$OUT/reference/export" --reference-cache "$OUT/reference_cache")
for f in 0.5 0.9; do
  "$PY" -m jest_ds.cli demo --out "$OUT" --steps "$STEPS" --methods jest --filter-ratio "$f" --tag "_f$f" "${REF[@]}"
done
"$PY" tools/speedup_report.py "$OUT"/iid "$OUT"/jest "$OUT"/flexi "$OUT"/independent "$OUT"/jest_f0.5 "$OUT"/jest_f0.9 \
  --out "$OUT/report_all" --metric eval/icon_retrieval/headline

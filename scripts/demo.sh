#!/usr/bin/env bash
# Set up (if needed) and run the main job on the default model and data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${BIASUNLEARN_VENV:-.venv}/bin/activate"
OUT="${1:-runs/demo}"
if biasunlearn train --help >/dev/null 2>&1; then
  # run twice: an interrupted run continues, a finished one is only evaluated and reported again
  RESUME=(); if [ -f "$OUT/config.json" ]; then RESUME=(--resume); fi
  exec biasunlearn train --model smollm2-135m --config configs/smollm2-cpu.yaml --out "$OUT" "${RESUME[@]}"
fi
exec biasunlearn eval --model smollm2-135m --benchmarks stereoset,crows_pairs,bbq,perplexity --out "$OUT"

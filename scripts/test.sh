#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${BIASUNLEARN_VENV:-.venv}/bin/activate"
# llama.cpp (llama-cpp-python, the `gguf-runtime` extra) runs exported GGUF files in the tests. pip compiles it the
# first time (a few minutes on two cores; pip keeps the built wheel). Without it (BIASUNLEARN_NO_LLAMA_CPP=1, or a
# failed build) the tests that run llama.cpp are skipped, and the rest run as before.
if [ "${BIASUNLEARN_NO_LLAMA_CPP:-0}" != "1" ] && ! python -c "import llama_cpp" >/dev/null 2>&1; then
  echo "installing llama-cpp-python (builds llama.cpp the first time)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" python -m pip install -q --disable-pip-version-check \
    "llama-cpp-python>=0.3.36,<0.4" \
    || echo "warning: llama-cpp-python could not be installed; the llama.cpp tests will be skipped" >&2
fi
# DeepSpeed runs its ZeRO-2 and ZeRO-3 engines on two CPU processes in the tests (tests/test_unlearn_sharded.py).
# Optional the same way (BIASUNLEARN_NO_DEEPSPEED=1 skips it); the torch already installed is held.
if [ "${BIASUNLEARN_NO_DEEPSPEED:-0}" != "1" ] && ! python -c "import deepspeed" >/dev/null 2>&1; then
  echo "installing deepspeed" >&2
  PIN="$(mktemp)"
  python -c "import torch; print('torch==' + torch.__version__)" > "$PIN"
  python -m pip install -q --disable-pip-version-check -c "$PIN" "deepspeed>=0.19.8,<0.20" \
    || echo "warning: deepspeed could not be installed; its tests will be skipped" >&2
  rm -f "$PIN"
fi
exec python -m pytest -q "$@"

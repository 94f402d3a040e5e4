#!/usr/bin/env bash
# GPU checks for swarmd, meant for a machine with an NVIDIA GPU (run through the device tool):
#   swarmd supervises a backend that allocates GPU memory (torch), NVML attributes that memory to the
#   backend's process group, FreeBackendMemory makes it release the memory and the recorded after-figure
#   drops, a bad pin is rejected, and `auto` picks a GPU.
# Where no GPU exists it runs the parts that need none and says that it skipped the rest (exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv (make test / make run create it) unless PYTHON names another interpreter.
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c "import ruamel.yaml, trio" 2>/dev/null || {
  echo "gpu-check: $PYTHON lacks swarmd's dependencies: run 'make test' first or set PYTHON" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_check.py "$@"

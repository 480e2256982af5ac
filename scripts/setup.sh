#!/usr/bin/env bash
# Create .venv (Python 3.10+) and install pipeplan with its test extras.
# torch==2.13.0 (a CPU build on this project's machines) is installed first when the
# venv has no torch, so that pip never resolves `torch>=2.4` to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "pipeplan needs Python 3.10+")'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0" >&2
  .venv/bin/pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c 'import planner, onnxruntime, pytest, hypothesis, onnxscript, transformers, importlib.util as u; assert u.find_spec("timm")' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.pipeplan-installed ]; then
  echo "setup: installing pipeplan and its dependencies" >&2
  # torch stays the one installed above (transformers would accept a newer one)
  .venv/bin/pip install -q -e ".[test]" "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
  # timm without its requirements: it requires torchvision, whose PyPI wheels are CUDA
  # builds; its other requirements come with transformers (see tests/corpus.py)
  .venv/bin/pip install -q --no-deps "timm>=1.0"
  touch .venv/.pipeplan-installed
fi

#!/usr/bin/env bash
# Set up, then run the whole test suite (extra arguments go to pytest, e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

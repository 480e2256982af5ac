#!/usr/bin/env bash
# Set up, then run pipeplan's main job on the bundled GPT sample.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m samples.demo "$@"

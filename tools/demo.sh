#!/usr/bin/env bash
# The main job: sets up .venv (tools/setup_env.sh), then shows an LSConv layer
# learning a stride on built-in synthetic data. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${MMLSTRIDE_VENV:-.venv}/bin/python" tools/demo_learn_stride.py "$@"

#!/usr/bin/env bash
# The test command: sets up .venv (tools/setup_env.sh), then runs the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${MMLSTRIDE_VENV:-.venv}/bin/python" -m pytest tests "$@"

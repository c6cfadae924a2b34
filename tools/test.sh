#!/usr/bin/env bash
# The test command: sets up .venv (tools/setup_env.sh), then runs the test suite (the
# product's tests/ and projects/lsconv_study/tests, the testpaths of pytest.ini).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${MMLSTRIDE_VENV:-.venv}/bin/python" -m pytest "$@"  # pytest.ini: tests/ and the study's tests

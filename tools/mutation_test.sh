#!/usr/bin/env bash
# Mutation testing: mutmut (configured in setup.cfg's [mutmut]) changes the package's code one
# small edit at a time (an operator, a constant, an argument) and runs the tests that execute the
# changed function among its module's tests (tests/mutation/subjects.py); a mutant that no test
# fails on is a survivor. The survivors of code that
# runs at import or in subprocesses then run again, each in a new process
# (tests/mutation/fresh_process.py), and the report per module goes into docs/mutation.md
# between its markers. Usage:
#   bash tools/mutation_test.sh            # every module, from scratch (67 minutes on 2 cores)
#   bash tools/mutation_test.sh --resume   # keep mutants/ and run what has no result yet
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
venv=${MMLSTRIDE_VENV:-.venv}
"$venv/bin/python" -m pip install -q -r requirements/mutation.txt
# Two runs at a time on two cores: one thread each, or torch's spinning OpenMP threads make the
# op's tests ten times slower than when traced alone, and mutants time out.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ "${1:-}" = --resume ]; then
  shift
else
  rm -rf mutants
  # mutmut makes the mutants and traces which tests call each function; the one mutant named
  # (of the multiply-add rule, which runs at import and is run again in a fresh process) only
  # ends that first run early. Then each function's tests are narrowed to its module's.
  "$venv/bin/mutmut" run --max-children 2 'mmlstride.engine.complexity.x_register__mutmut_1'
  "$venv/bin/python" tests/mutation/subjects.py
fi
"$venv/bin/mutmut" run --max-children 2 "$@"
"$venv/bin/python" tests/mutation/fresh_process.py
exec "$venv/bin/python" tests/mutation/report.py --out docs/mutation.md

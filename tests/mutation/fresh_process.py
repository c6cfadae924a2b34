"""Second run of the survivors whose code mutmut's forked runs cannot reach: code that runs
when a module is imported (registrations) and code that runs in processes a test starts (the
ranks of a distributed run).

    python tests/mutation/fresh_process.py [--mutants mutants] [NAME_PATTERN ...]

mutmut forks each mutant's run from a process that has already imported the package, and it
picks a mutant's tests by which tests called its function in that process. A mutant of an
import-time registration is therefore never in effect, and one of the code only a subprocess
runs is given no test. Here each survivor of the functions below runs in a new pytest
process, its mutant active from the first import (mutmut's MUTANT_UNDER_TEST, which the
subprocesses inherit), against the tests of that function's subject. The exit codes go to
``fresh_process.json`` in mutmut's folder, which tests/mutation/report.py reads.
"""
import argparse
import fnmatch
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import report

# Function (mutmut's mangled name, without the mutant number) -> the tests of its subject, in
# stages: the next stage runs only when the mutant passes the one before (most fail the first).
FRESH_PROCESS_TESTS: Dict[str, List[List[str]]] = {
    # Registered when mmlstride.ops imports: the op's fake and autograd implementations.
    'mmlstride.ops.ls_conv2d_function.x__register_torch_library': [
        ['tests/op/test_torch_library.py', 'tests/op/test_errors.py'],
        ['tests/op/test_oracles.py', 'tests/op/test_autocast.py', 'tests/layer/test_layer.py']],
    # Registered when mmlstride.engine imports: LSConv's multiply-add count.
    'mmlstride.engine.complexity.x_register': [['tests/engine/test_complexity.py']],
    # Run by the ranks of a two-process gloo run.
    'mmlstride.engine.stride_logger_hook.x_grid_states': [
        ['tests/engine/test_stride_hook_distributed.py']],
    'mmlstride.engine.stride_logger_hook.x_check_ranks_agree': [
        ['tests/engine/test_stride_hook_distributed.py']],
}
# The tests mutmut's own runs leave out (setup.cfg), left out here too.
DESELECT = ('not torch_compile_fullgraph and not compile_and_export_keep_the_op')
RESULTS = 'fresh_process.json'
TIMEOUT_S = 900


def function_of(mutant: str) -> str:
    return mutant.rsplit('__mutmut_', 1)[0]


def candidates(codes: Dict[str, Optional[int]], done: Dict[str, int],
               patterns: Sequence[str] = ('*', )) -> List[str]:
    """The survivors of the functions above, matching one of ``patterns`` (fnmatch), that
    have no fresh-process result yet."""
    justified = report.read_justified()
    return [m for m, code in sorted(codes.items())
            if function_of(m) in FRESH_PROCESS_TESTS and report.outcome(code) == 'survived'
            and m not in justified and m not in done
            and any(fnmatch.fnmatchcase(m, p) for p in patterns)]


def run_mutant(mutant: str, folder: Path) -> int:
    """pytest's exit code for ``mutant``'s tests in a new process per stage (-x: the first
    failure decides), or 36 (mutmut's timeout code) past TIMEOUT_S."""
    environment = dict(os.environ, MUTANT_UNDER_TEST=mutant)
    for stage in FRESH_PROCESS_TESTS[function_of(mutant)]:
        command = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
                   '-k', DESELECT, *stage]
        try:
            code = subprocess.run(command, cwd=folder, env=environment,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            return 36
        if code != 0:
            return code
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mutants', type=Path, default=Path('mutants'),
                        help="mutmut's working folder (default: mutants)")
    parser.add_argument('--jobs', type=int, default=2,
                        help='mutants run at once (default: 2, the cores of these machines)')
    parser.add_argument('patterns', nargs='*', default=['*'],
                        help='run only the mutants whose names match one of these (fnmatch)')
    args = parser.parse_args(argv)
    path = args.mutants / RESULTS
    done = json.loads(path.read_text()) if path.exists() else {}
    todo = candidates(report.read_results(args.mutants), done, args.patterns)
    print(f'{len(todo)} survivors to run in a fresh process, {args.jobs} at a time')
    folder = args.mutants.resolve()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = {pool.submit(run_mutant, mutant, folder): mutant for mutant in todo}
        for index, run in enumerate(as_completed(runs), 1):
            done[runs[run]] = run.result()
            print(f'[{index}/{len(todo)}] {runs[run]}: {report.outcome(done[runs[run]])}',
                  flush=True)
            path.write_text(json.dumps(done, indent=1, ensure_ascii=False, sort_keys=True))


if __name__ == '__main__':
    main()

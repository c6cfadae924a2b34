"""Each mutated module's tests: a mutant runs only the tests of its module's subject.

    python tests/mutation/subjects.py [--mutants mutants]

mutmut traces which tests call each function and gives a mutant of that function every one of
them: a mutant of an argument check would run the op's tests, the ONNX exports and the
detector trainings that happen to build a layer. This narrows each function's tests, in
mutmut's stats file, to those under its module's paths in SUBJECT_TESTS (the tests written
for that module and for the code that is its direct user), so that the whole run takes about
an hour on 2 cores. It runs between mutmut's trace and its mutants (tools/mutation_test.sh);
a function that no test of its subject calls is left with none, and its mutants count as
survivors in the report. The trace is kept beside the stats, so that after a change here
running this again and then ``mutmut run NAME ...`` runs chosen mutants on the new subjects.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

STATS = 'mutmut-stats.json'
TRACED = 'mutmut-stats-traced.json'  # mutmut's stats as its trace left them
STUDY_TESTS = 'projects/lsconv_study/tests/'

# Mutated module (its dotted name, a package's prefix, or one function's mangled name) -> the
# test paths of its subject.
SUBJECT_TESTS: Dict[str, Tuple[str, ...]] = {
    'mmlstride.ops': ('tests/op/', 'tests/layer/', 'tests/export/'),  # the package, the loader
    'mmlstride.ops.arguments': ('tests/op/', 'tests/layer/'),
    'mmlstride.ops.ls_conv2d_function': ('tests/op/', 'tests/layer/'),
    # The op's entry, whose export branches (ONNX, torch.export's symbolic sizes) the exports run.
    'mmlstride.ops.ls_conv2d_function.x_ls_conv2d': ('tests/op/', 'tests/layer/', 'tests/export/'),
    # The op's ONNX symbolic: what its exports run.
    'mmlstride.ops.ls_conv2d_function.x__check_onnx_opset': ('tests/export/', ),
    'mmlstride.ops.ls_conv2d_function.x__export_in_standard_operators': ('tests/export/', ),
    'mmlstride.ops.ls_conv2d_reference': ('tests/op/', ),
    'mmlstride.ops.ls_conv2d_export': ('tests/export/', 'tests/layer/test_fixed_grid.py'),
    'mmlstride.ops.ls_conv2d_layer': ('tests/layer/', 'tests/export/'),
    'mmlstride.ops.blur_conv2d': ('tests/layer/test_blur.py', 'tests/models/'),
    'mmlstride.models': ('tests/models/', ),
    'mmlstride.engine': ('tests/engine/', 'tests/mmdet_integration/'),
    'mmlstride.evaluation': ('tests/evaluation/', STUDY_TESTS + 'test_datasets_ground_truth.py'),
    'projects.lsconv_study.lsconv_study.datasets': (STUDY_TESTS, ),
    'projects.lsconv_study.lsconv_study.paired_stats': (STUDY_TESTS + 'test_paired_stats.py',
                                                        STUDY_TESTS + 'test_benchmark.py'),
}


def subject_of(function: str) -> Tuple[str, ...]:
    """The test paths of the module that holds ``function`` (mutmut's mangled name), by the
    longest matching entry of SUBJECT_TESTS."""
    matches = [module for module in SUBJECT_TESTS
               if function == module or function.startswith(module + '.')]
    if not matches:
        raise KeyError(f'function={function!r} expected in a module of SUBJECT_TESTS '
                       f'({", ".join(sorted(SUBJECT_TESTS))})')
    return SUBJECT_TESTS[max(matches, key=len)]


def narrow(tests_by_function: Dict[str, Iterable[str]]) -> Dict[str, List[str]]:
    """Each function's tests (pytest node ids), less those outside its module's subject."""
    return {function: sorted(test for test in tests
                             if test.startswith(subject_of(function)))
            for function, tests in tests_by_function.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mutants', type=Path, default=Path('mutants'),
                        help="mutmut's working folder (default: mutants)")
    args = parser.parse_args(argv)
    path, traced = args.mutants / STATS, args.mutants / TRACED
    if not traced.exists():
        traced.write_text(path.read_text())
    stats = json.loads(traced.read_text())
    before = stats['tests_by_mangled_function_name']
    after = narrow(before)
    stats['tests_by_mangled_function_name'] = after
    path.write_text(json.dumps(stats, indent=4))
    durations = stats['duration_by_test']

    def seconds(tests_by_function):
        return sum(durations.get(test, 0.0) for tests in tests_by_function.values()
                   for test in tests)

    print(f'{len(after)} functions: tests per function narrowed to their subjects, '
          f'{seconds(before):.0f} s -> {seconds(after):.0f} s of tests over all functions; '
          f'{sum(not tests for tests in after.values())} left with none')


if __name__ == '__main__':
    main()

"""Each mutated module has a subject, every subject's tests exist, and a mutant's tests are
narrowed to its module's, a function's own entry first."""
import configparser
import json
from pathlib import Path

import pytest

import subjects

ROOT = Path(__file__).resolve().parents[2]


def mutated_modules():
    """The modules setup.cfg's [mutmut] only_mutate selects, as dotted names."""
    config = configparser.ConfigParser()
    config.read(ROOT / 'setup.cfg')
    patterns = config.get('mutmut', 'only_mutate').split()
    files = {path for pattern in patterns for path in ROOT.glob(pattern)
             if path.suffix == '.py'}
    return sorted('.'.join(path.relative_to(ROOT).with_suffix('').parts).replace(
        '.__init__', '') for path in files)


def test_every_mutated_module_has_a_subject_whose_tests_exist():
    modules = mutated_modules()
    assert 'mmlstride.ops.ls_conv2d_layer' in modules and len(modules) >= 15
    for module in modules:
        for path in subjects.subject_of(module + '.x_function'):
            assert (ROOT / path).exists(), (module, path)


def test_narrow_keeps_only_the_subjects_tests():
    tests = ['tests/op/test_oracles.py::test_a[1]', 'tests/layer/test_layer.py::test_b',
             'tests/export/test_export.py::test_c', 'tests/mmdet_integration/test_x.py::test_d']
    narrowed = subjects.narrow({
        'mmlstride.ops.arguments.x_pair': tests,
        'mmlstride.ops.ls_conv2d_reference.x_f': tests,
        'mmlstride.ops.ls_conv2d_function.x__check_onnx_opset': tests,  # its own entry
        'mmlstride.engine.stride_logger_hook.xǁStrideLoggerHookǁafter_train_iter': tests,
        'mmlstride.models.ls_resnet.x_g': tests,
    })
    assert narrowed == {
        'mmlstride.ops.arguments.x_pair': sorted(tests[:2]),
        'mmlstride.ops.ls_conv2d_reference.x_f': tests[:1],
        'mmlstride.ops.ls_conv2d_function.x__check_onnx_opset': tests[2:3],
        'mmlstride.engine.stride_logger_hook.xǁStrideLoggerHookǁafter_train_iter': tests[3:],
        'mmlstride.models.ls_resnet.x_g': [],
    }


def test_a_module_without_a_subject_is_named():
    with pytest.raises(KeyError, match="function='mmlstride.toolsx.x_f' expected in a module"):
        subjects.subject_of('mmlstride.toolsx.x_f')
    with pytest.raises(KeyError):  # a prefix of a name is not its module
        subjects.subject_of('mmlstride.modelsx.x_f')


def test_main_rewrites_only_the_tests_of_mutmuts_stats(tmp_path, capsys):
    stats = {'tests_by_mangled_function_name': {
        'mmlstride.ops.ls_conv2d_reference.x_f': ['tests/op/a.py::t', 'tests/layer/b.py::t'],
        'mmlstride.ops.blur_conv2d.x_g': ['tests/op/a.py::t']},
        'duration_by_test': {'tests/op/a.py::t': 2.0, 'tests/layer/b.py::t': 3.0},
        'stats_time': 1.5}
    (tmp_path / subjects.STATS).write_text(json.dumps(stats))
    subjects.main(['--mutants', str(tmp_path)])
    written = json.loads((tmp_path / subjects.STATS).read_text())
    assert written['tests_by_mangled_function_name'] == {
        'mmlstride.ops.ls_conv2d_reference.x_f': ['tests/op/a.py::t'],
        'mmlstride.ops.blur_conv2d.x_g': []}
    assert written['duration_by_test'] == stats['duration_by_test']
    assert written['stats_time'] == 1.5
    # Narrowed again, as after a change of the subjects: from the trace, not the narrowed stats.
    assert json.loads((tmp_path / subjects.TRACED).read_text()) == stats
    subjects.SUBJECT_TESTS['mmlstride.ops.ls_conv2d_reference'] = ('tests/layer/', )
    try:
        subjects.main(['--mutants', str(tmp_path)])
    finally:
        subjects.SUBJECT_TESTS['mmlstride.ops.ls_conv2d_reference'] = ('tests/op/', )
    written = json.loads((tmp_path / subjects.STATS).read_text())
    assert written['tests_by_mangled_function_name'][
        'mmlstride.ops.ls_conv2d_reference.x_f'] == ['tests/layer/b.py::t']
    out = capsys.readouterr().out
    assert '7 s -> 2 s of tests' in out and '1 left with none' in out

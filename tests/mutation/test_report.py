"""The mutation report counts mutmut's results per module, sets justified survivors apart and
holds every module to the target."""
import json

import pytest

import report


def write_meta(root, path, codes):
    meta = root / path
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({'exit_code_by_key': codes}))


@pytest.fixture
def mutants(tmp_path):
    write_meta(tmp_path, 'mmlstride/ops/arguments.py.meta', {
        'mmlstride.ops.arguments.x_pair__mutmut_1': 1,      # a test failed
        'mmlstride.ops.arguments.x_pair__mutmut_2': 36,     # timed out
        'mmlstride.ops.arguments.x_pair__mutmut_3': 0,      # survived
        'mmlstride.ops.arguments.x_pair__mutmut_4': 0,      # survived, justified
        'mmlstride.ops.arguments.x_pair__mutmut_5': 33,     # no test ran it
    })
    write_meta(tmp_path, 'mmlstride/models/ls_resnet.py.meta', {
        'mmlstride.models.ls_resnet.xǁLSResNetǁ__init____mutmut_1': -11,  # crashed
        'mmlstride.models.ls_resnet.xǁLSResNetǁ__init____mutmut_2': None,  # not run
        'mmlstride.models.ls_resnet.xǁLSResNetǁ__init____mutmut_3': 255,  # the runner failed
    })
    return tmp_path


def test_counts_per_module(mutants):
    codes = report.read_results(mutants)
    table = report.tally(codes, {'mmlstride.ops.arguments.x_pair__mutmut_4': 'same value'})
    assert table['mmlstride.ops.arguments'] == {'killed': 2, 'survived': 2, 'justified': 1}
    assert table['mmlstride.models.ls_resnet'] == {'killed': 1, 'not run': 1, 'exit code 255': 1}
    assert report.score(table['mmlstride.ops.arguments']) == 0.5
    assert report.score(table['mmlstride.models.ls_resnet']) == 1.0


def test_markdown_lists_survivors_and_justified_ones(mutants):
    codes = report.read_results(mutants)
    lines = report.markdown(codes, {'mmlstride.ops.arguments.x_pair__mutmut_4': 'same value'})
    assert '| `mmlstride.ops.arguments` | 5 | 2 | 1 | 2 | 0 | 50.0% |' in lines
    assert '| all | 8 | 3 | 1 | 2 | 2 | 60.0% |' in lines
    assert '- `mmlstride.ops.arguments.x_pair__mutmut_3`' in lines
    assert '- `mmlstride.ops.arguments.x_pair__mutmut_5`' in lines
    assert '- `mmlstride.ops.arguments.x_pair__mutmut_4`: same value' in lines
    assert report.below_target(codes, {}) == [('mmlstride.ops.arguments', 0.4)]


def test_a_killed_mutant_cannot_be_listed_as_justified(mutants):
    with pytest.raises(ValueError, match='x_pair__mutmut_1 is listed as justified'):
        report.tally(report.read_results(mutants),
                     {'mmlstride.ops.arguments.x_pair__mutmut_1': 'wrong'})


def test_equivalents_file_format(tmp_path):
    listed = tmp_path / 'justified.txt'
    listed.write_text('# comment\n\na.b.x_f__mutmut_1: the same value either way\n')
    assert report.read_justified(listed) == {'a.b.x_f__mutmut_1': 'the same value either way'}
    listed.write_text('a.b.x_f__mutmut_1\n')
    with pytest.raises(ValueError, match='expected "mutant name: reason"'):
        report.read_justified(listed)
    assert isinstance(report.read_justified(), dict)  # the committed list parses


def test_report_goes_between_the_markers(tmp_path, mutants):
    page = tmp_path / 'mutation.md'
    page.write_text(f'intro\n{report.START}\nold\n{report.END}\nafter\n')
    assert report.main(['--mutants', str(mutants), '--out', str(page)]) == 1  # below target
    text = page.read_text()
    assert text.startswith(f'intro\n{report.START}\n| module |')
    assert '\nold\n' not in text
    assert text.endswith(f'{report.END}\nafter\n')
    page.write_text('no markers')
    with pytest.raises(ValueError, match='lacks the markers'):
        report.write_between_markers(page, ['x'])


def test_fresh_process_runs_override_and_pick_only_their_functions(mutants):
    import fresh_process
    survivor = 'mmlstride.engine.complexity.x_register__mutmut_1'
    write_meta(mutants, 'mmlstride/engine/complexity.py.meta', {
        survivor: 0, 'mmlstride.engine.complexity.x_register__mutmut_2': 1,
        'mmlstride.engine.complexity.x_lsconv_count__mutmut_1': 0})
    codes = report.read_results(mutants)
    # Only survivors of the listed functions, and not those already run.
    assert fresh_process.candidates(codes, {}) == [survivor]
    assert fresh_process.candidates(codes, {survivor: 1}) == []
    assert fresh_process.candidates(codes, {}, ['mmlstride.engine.*']) == [survivor]
    assert fresh_process.candidates(codes, {}, ['mmlstride.ops.*']) == []
    # A fresh-process kill counts; a fresh-process survival leaves mutmut's result.
    killed_by_mutmut = 'mmlstride.engine.complexity.x_register__mutmut_2'
    (mutants / fresh_process.RESULTS).write_text(json.dumps({survivor: 4, killed_by_mutmut: 0}))
    assert report.outcome(report.read_results(mutants)[survivor]) == 'killed'  # import broken
    assert report.read_results(mutants)[killed_by_mutmut] == 1

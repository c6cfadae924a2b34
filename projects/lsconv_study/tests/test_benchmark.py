"""The study's benchmark: paired starts within a seed, its statistics and tables, the reuse of
finished runs, training seed by seed, shift evaluations once per run, and costs."""
import argparse
import collections
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import require_module

require_module('mmdet')

from mmengine.config import DictAction  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from projects.lsconv_study.lsconv_study import (  # noqa: E402
    benchmark, paired_stats, report, runner, suites)
from projects.lsconv_study.lsconv_study.testing import tiny_run_config  # noqa: E402


class RecordStart(Hook):
    """Records the model's state when training starts (after init and ``load_from``), the
    images of the first batches, and the training losses."""

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        self.requires_grad = {k: p.requires_grad for k, p in runner.model.named_parameters()}
        self.images, self.losses = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.images.append([s.img_id for s in data_batch['data_samples']])

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(outputs['loss'].item())


# Per suite of the detection benchmark: each LSConv setting's number of learned strides and
# where they start (the neck's: at their nominal strides, 2 for the backbone's 3 and P6, P7,
# 1 for the FPN's 6 others).
SUITE_STRIDES = {
    'digits': {'lsconv': (3, 2.0), 'frozen': (3, 2.0), 'lsconv-badinit': (3, 1.5),
               'frozen-badinit': (3, 1.5)},
    'digits-grid': {'lsconv': (3, 2.0), 'lsconv-centre': (3, 2.0), 'lsconv-phase': (3, 2.0),
                    'lsconv-half': (3, 2.0)},
    'digits-neck': {'lsconv-neck': (11, {2.0: 5, 1.0: 6})},
    'digits-frcnn': {'lsconv': (3, 2.0), 'lsconv-phase': (3, 2.0)},
    'scaled': {'lsconv': (3, 2.0), 'lsconv-centre': (3, 2.0), 'lsconv-phase': (3, 2.0),
               'lsconv-half': (3, 2.0)},
    **{suite: {'lsconv': (3, 2.0), 'lsconv-phase': (3, 2.0), 'lsconv-half': (3, 2.0),
               'lsconv-half-frozen': (3, 2.0)}
       for suite in ('antialias', 'antialias-scaled', 'antialias-frcnn')},
}


# Settings whose grid is translated by a fixed half pixel, and those with frozen strides.
HALF_PHASE = ('lsconv-half', 'lsconv-half-frozen')


FROZEN = ('frozen', 'frozen-badinit', 'lsconv-half-frozen')


@pytest.mark.parametrize('suite', list(SUITE_STRIDES))
def test_benchmark_settings_start_from_the_same_weights_and_data(tmp_path, suite):
    """Within a seed, every setting of a detection benchmark suite starts from the same
    initial weights on every key it shares with the fixed-stride model, with its own stride
    value, and sees the same batches; the frozen-at-nominal control trains as the fixed model
    does."""
    assert set(suites.SUITES) == set(SUITE_STRIDES)
    weights = runner.write_initial_weights(3, str(tmp_path / 'seed3.pth'), suite=suite)
    starts = {}
    for setting in suites.SUITES[suite].settings:
        cfg = tiny_run_config(tmp_path / setting, tmp_path / 'data',
                              suites.config_path(setting, suite))
        parser = argparse.ArgumentParser()  # as mmdet's train tool reads the options
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(
            ['--cfg-options', *runner.seed_options(3, weights)]).cfg_options)
        cfg.merge_from_dict({'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None})
        cfg.train_cfg.val_interval = 100
        trainer = Runner.from_cfg(cfg)
        trainer.register_hook(RecordStart(), 'LOWEST')
        trainer.train()
        starts[setting] = next(h for h in trainer.hooks if isinstance(h, RecordStart))
    fixed = starts['fixed']
    for setting, start in starts.items():
        shared = set(start.state) & set(fixed.state)
        assert len(shared) > 0.9 * len(fixed.state), setting
        for key in shared:
            assert torch.equal(start.state[key], fixed.state[key]), (setting, key)
        assert start.images == fixed.images, setting
        count, value = SUITE_STRIDES[suite].get(setting, (0, None))
        stride_keys = [k for k in start.state if k.endswith('learnable_stride')]
        assert len(stride_keys) == count, setting
        values = [start.state[key].tolist() for key in stride_keys]
        assert all(h == w for h, w in values), (setting, values)
        expected = value if isinstance(value, dict) else {value: count} if count else {}
        assert collections.Counter(h for h, _ in values) == expected, (setting, values)
        for key in stride_keys:
            assert start.requires_grad[key] == (setting not in FROZEN), (setting, key)
        phase_keys = [k for k in start.state if k.endswith('learnable_phase')]
        assert len(phase_keys) == (3 if setting.startswith('lsconv-phase') else 0), setting
        assert all(start.state[key].tolist() == [0.0, 0.0] for key in phase_keys), setting
        held = [start.state[k].tolist() for k in start.state if k.endswith('fixed_phase')]
        assert held == ([[0.5, 0.5]] * 3 if setting in HALF_PHASE else []), setting
    # The weights were drawn from this suite's fixed model: they are all of its start.
    checkpoint = torch.load(weights)
    assert checkpoint['meta']['drawn_by'] == suites.SUITES[suite].settings['fixed'][0]
    assert set(checkpoint['state_dict']) == set(fixed.state)
    assert all(torch.equal(v, fixed.state[k]) for k, v in checkpoint['state_dict'].items())
    if 'dcn' in starts:
        assert any(k.endswith('conv_offset.weight') for k in starts['dcn'].state)
    # Every LSConv grid but the moved ones starts as nn.Conv2d's: the same first loss
    # (RetinaNet's; Faster R-CNN samples proposals at random, and building LSConv layers draws
    # from the generator).
    for setting in starts if 'frcnn' not in suite else ():
        if setting.startswith('lsconv') and setting not in ('lsconv-badinit', *HALF_PHASE):
            assert starts[setting].losses[0] == pytest.approx(fixed.losses[0], rel=1e-5), setting
    if suite != 'digits':
        return
    # Draws differ between seeds; the control computes the fixed model's losses.
    assert not torch.equal(torch.load(runner.write_initial_weights(4, str(tmp_path / 's4.pth')))[
        'state_dict']['backbone.conv1.weight'], fixed.state['backbone.conv1.weight'])
    assert starts['frozen'].losses == pytest.approx(fixed.losses, rel=1e-5)


def test_benchmark_tables_of_no_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(['--suite', 'scaled', '--no-train', '--work-dir', str(tmp_path)])
    assert '--no-train: no finished run of fixed lsconv' in capsys.readouterr().err


def test_benchmark_summary_pairs_seeds_with_a_confidence_interval(tmp_path):

    def run(value):
        return {'bbox_mAP': value, 'bbox_mAP_50': value + 20, 'seconds_per_iter': 0.1,
                'final_strides': {}, 'scalars': ''}

    runs = {'fixed': {0: run(60.0), 1: run(62.0), 2: run(61.0)},
            'lsconv': {0: run(61.0), 1: run(64.0), 2: run(64.0), 3: run(99.0)}}
    rows, pairs = paired_stats.summarise(runs)
    assert [r['bbox_mAP_mean'] for r in rows] == pytest.approx([61.0, 72.0])
    assert rows[0]['bbox_mAP_std'] == pytest.approx(1.0)
    (pair,) = pairs  # seed 3 has no fixed run: not paired
    assert pair['seeds'] == [0, 1, 2] and pair['differences'] == [1.0, 2.0, 3.0]
    # mean 2, std 1 over 3 seeds: half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert (pair['mean'], pair['ci95']) == pytest.approx((2.0, 2.4841), abs=1e-4)
    table = report.markdown(rows, pairs, runs)
    # paired t-test: t = 2 / (1 / sqrt(3)) = 3.46 on 2 degrees of freedom, p = 0.074
    assert pair['p_value'] == pytest.approx(0.0742, abs=1e-4)
    assert ('| `lsconv` | `fixed` | 3 | +2.00 | [-0.48, +4.48] | 0.074 | +1.0, +2.0, +3.0 |'
            in table)
    # Learned strides are also paired with their frozen control.
    runs['frozen'] = {0: run(60.5), 1: run(61.0)}
    _, pairs = paired_stats.summarise(runs)
    assert [(p['setting'], p['against'], p['differences']) for p in pairs] == [
        ('lsconv', 'fixed', [1.0, 2.0, 3.0]), ('frozen', 'fixed', [0.5, -1.0]),
        ('lsconv', 'frozen', [0.5, 3.0])]
    # In the grid suite, grid variants are paired with the corner grid too; learned phases
    # and s/iter shown.
    del runs['frozen']
    runs['lsconv-phase'] = {seed: dict(run(63.0), final_phases={'backbone.layer2.0.conv1':
                                                                 (0.25 * seed, -0.5)})
                            for seed in (0, 1)}
    rows, pairs = paired_stats.summarise(runs, 'digits-grid')
    assert ('lsconv-phase', 'lsconv', [2.0, -1.0]) in [
        (p['setting'], p['against'], p['differences']) for p in pairs]
    row, = [line for line in report.markdown(rows, pairs, runs, 'digits-grid').splitlines()
            if line.startswith('| LSConv, corner grid with a learned phase (`lsconv-phase`) | 2 |')]
    assert '| 0.10 |' in row and row.endswith('| (0.12, 0.50) |')
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{report.README_START}\nold\n{report.README_END}\nrest\n')
    report.rewrite_readme(str(readme), table)
    text = readme.read_text()
    assert 'old' not in text and table in text and text.endswith(f'{report.README_END}\nrest\n')
    readme.write_text('no markers')
    with pytest.raises(ValueError, match='markers'):
        report.rewrite_readme(str(readme), table)


def test_benchmark_suites_have_their_own_readme_sections_and_settings(tmp_path, capsys):
    for name, suite in suites.SUITES.items():
        assert suite.baseline in suite.settings and set(suite.paired) <= set(suite.settings)
        for setting in suite.settings:
            assert os.path.isfile(suites.config_path(setting, name)), (name, setting)
        if suite.runs_of:  # shared runs are the same trainings: same configs, same folder
            owner = suites.SUITES[suite.runs_of]
            assert suite.folder == owner.folder and suite.baseline == owner.baseline
            for setting in set(suite.settings) & set(owner.settings):
                assert suite.settings[setting][0] == owner.settings[setting][0], setting
    start, end = report.readme_markers('scaled')
    assert '--suite scaled' in start and (start, end) != report.readme_markers()
    readme = tmp_path / 'README.md'
    readme.write_text(f'{report.README_START}\ndigits\n{report.README_END}\n{start}\nold\n{end}\n')
    report.rewrite_readme(str(readme), 'new', 'scaled')
    assert readme.read_text() == (f'{report.README_START}\ndigits\n{report.README_END}\n{start}'
                                  '\nnew'
                                  f'\n{end}\n')
    with pytest.raises(SystemExit):
        benchmark.main(['--suite', 'scaled', '--settings', 'frozen', '--work-dir', str(tmp_path)])
    expected = "--settings frozen: expected some of ['fixed', 'lsconv', 'dcn', 'lsconv-centre'"
    assert expected in capsys.readouterr().err


def test_benchmark_reuses_only_runs_trained_as_planned(tmp_path):
    """A finished run counts for a seed only if the config mmengine saved with it has that
    seed, those initial weights and the study's overrides; otherwise it is retrained."""
    run_dir = tmp_path / 'fixed' / 'seed3'
    run_dir.mkdir(parents=True)
    weights = str(tmp_path / 'initial_weights' / 'seed3.pth')
    (run_dir / suites.SETTINGS['fixed'][0]).write_text(
        f"load_from = {weights!r}\nrandomness = dict(seed=3)\ntrain_cfg = dict(max_iters=200)\n")
    assert runner.run_is_paired(str(run_dir), 'fixed', 3, weights, ['train_cfg.max_iters=200'])
    assert runner.run_is_paired(str(run_dir), 'fixed', 3, weights, [])
    assert not runner.run_is_paired(str(run_dir), 'fixed', 4, weights, [])
    assert not runner.run_is_paired(str(run_dir), 'fixed', 3, weights + 'x', [])
    assert not runner.run_is_paired(str(run_dir), 'fixed', 3, weights, ['train_cfg.max_iters=300'])
    assert not runner.run_is_paired(str(run_dir), 'lsconv', 3, weights, [])  # nothing saved


def test_benchmark_trains_seed_by_seed(tmp_path, monkeypatch):
    """The plan runs every setting of a seed before the next seed, so a study stopped
    part-way holds whole pairs; the tables keep the suite's order of settings."""
    trained = []

    def fake_train(command, label, work_dir, threads):
        options = dict(o.split('=', 1) for o in command[command.index('--cfg-options') + 1:])
        setting = label.split(',')[0]
        trained.append(label)
        (Path(work_dir) / '20260101_000000' / 'vis_data').mkdir(parents=True)
        (Path(work_dir) / suites.SUITES['digits-grid'].settings[setting][0]).write_text(
            f"load_from = {options['load_from']!r}\n"
            f"randomness = dict(seed={options['randomness.seed']})\n")
        (Path(work_dir) / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
            '{"loss": 1.0, "time": 0.2, "step": 50}\n'
            '{"coco/bbox_mAP": 0.5, "coco/bbox_mAP_50": 0.9, "step": 1200}\n')

    monkeypatch.setattr(benchmark, 'train', fake_train)
    monkeypatch.setattr(benchmark, 'write_initial_weights', lambda seed, path, *args: path)
    monkeypatch.setattr(benchmark, 'plot', lambda *args: None)
    benchmark.main(['--suite', 'digits-grid', '--settings', 'fixed', 'lsconv', 'lsconv-centre',
               '--seeds', '1', '0', '--other-seeds', '0', '--work-dir', str(tmp_path)])
    assert trained == ['fixed, seed 0', 'lsconv, seed 0', 'lsconv-centre, seed 0',
                       'fixed, seed 1', 'lsconv, seed 1']
    table = (tmp_path / 'detection_benchmark.md').read_text()
    rows = [table.index(f'(`{setting}`)') for setting in ('fixed', 'lsconv', 'lsconv-centre')]
    assert rows == sorted(rows)


def test_benchmark_no_train_reports_the_finished_runs_only(tmp_path, monkeypatch, capsys):
    """--no-train trains nothing and writes no initial weights: the tables hold the finished
    runs of the plan that were trained as planned, and the others are named as left out."""
    monkeypatch.setattr(benchmark, 'train', lambda *args: pytest.fail('trained with --no-train'))
    monkeypatch.setattr(benchmark, 'write_initial_weights',
                        lambda *args: pytest.fail('drew weights with --no-train'))
    weights = str(tmp_path / 'initial_weights' / 'seed0.pth')
    for setting, value in (('fixed', 0.61), ('lsconv-phase', 0.64)):
        run_dir = tmp_path / setting / 'seed0'
        (run_dir / '20260101_000000' / 'vis_data').mkdir(parents=True)
        (run_dir / suites.SUITES['digits-grid'].settings[setting][0]).write_text(
            f'load_from = {weights!r}\nrandomness = dict(seed=0)\n')
        (run_dir / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
            '{"loss": 1.0, "time": 0.2, "step": 50}\n'
            f'{{"coco/bbox_mAP": {value}, "coco/bbox_mAP_50": 0.9, "step": 1200}}\n')
    benchmark.main(['--suite', 'digits-grid', '--no-train', '--seeds', '0', '--other-seeds', '0',
               '--work-dir', str(tmp_path)])
    out = capsys.readouterr().out
    for setting in ('lsconv', 'lsconv-centre', 'dcn'):
        assert f'-- {setting}, seed 0: no finished run trained as planned, left out' in out
    table = (tmp_path / 'detection_benchmark.md').read_text()
    assert '| `lsconv-phase` | `fixed` | 1 | +3.00 |' in table
    assert '(`fixed`) | 1 | 61.0 ± 0.0 | 90.0 | - | - | 0.20 |' in table
    with pytest.raises(SystemExit):
        benchmark.main(['--suite', 'digits-grid', '--no-train', '--force', '--work-dir',
                   str(tmp_path)])


def fake_finished_run(run_dir: Path, setting: str, suite: str, weights: str, seed: int,
                      bbox_map: float) -> None:
    """The files of a finished run that the benchmark reads: config, scalars, checkpoint."""
    (run_dir / '20260101_000000' / 'vis_data').mkdir(parents=True, exist_ok=True)
    (run_dir / suites.SUITES[suite].settings[setting][0]).write_text(
        f'load_from = {weights!r}\nrandomness = dict(seed={seed})\n')
    (run_dir / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
        '{"loss": 1.0, "time": 0.2, "step": 50}\n'
        f'{{"coco/bbox_mAP": {bbox_map}, "coco/bbox_mAP_50": 0.9, "step": 1200}}\n')
    (run_dir / 'iter_1200.pth').write_bytes(b'weights')
    (run_dir / 'last_checkpoint').write_text(str(run_dir / 'iter_1200.pth'))


def test_benchmark_evaluates_each_finished_run_under_shifts_once(tmp_path, monkeypatch):
    """Every finished run is evaluated under shifts once (a retrained run again); the tables
    show each setting's consistency and the paired consistency differences."""
    evaluated = []

    def fake_evaluate(run_dir, setting, label, threads, suite):
        evaluated.append(label)
        consistency = {'fixed': 0.90, 'lsconv-half-frozen': 0.95}[setting]
        seed = int(run_dir[-1])
        Path(run_dir, runner.CONSISTENCY_FILE).write_text(json.dumps({
            'whole': {'consistency': consistency + 0.01 * seed, 'mAP_spread': 2.0},
            'fractional': {'consistency': consistency - 0.1, 'mAP_spread': 3.0}}))

    def fake_train(command, label, work_dir, threads):
        options = dict(o.split('=', 1) for o in command[command.index('--cfg-options') + 1:])
        fake_finished_run(Path(work_dir), label.split(',')[0], 'antialias',
                          options['load_from'], int(options['randomness.seed']), 0.7)

    monkeypatch.setattr(benchmark, 'evaluate_shifts', fake_evaluate)
    monkeypatch.setattr(benchmark, 'train', fake_train)
    monkeypatch.setattr(benchmark, 'write_initial_weights', lambda seed, path, *args: path)
    weights = str(tmp_path / 'initial_weights' / 'seed0.pth')
    fake_finished_run(tmp_path / 'fixed' / 'seed0', 'fixed', 'antialias', weights, 0, 0.6)
    stale = tmp_path / 'lsconv-half-frozen' / 'seed1' / runner.CONSISTENCY_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text('{}')  # of a run that was not trained as planned: retrained, evaluated
    arguments = ['--suite', 'antialias', '--settings', 'fixed', 'lsconv-half-frozen',
                 '--seeds', '0', '1', '--other-seeds', '0', '1', '--work-dir', str(tmp_path)]
    benchmark.main(arguments)
    assert sorted(evaluated) == ['fixed, seed 0', 'fixed, seed 1', 'lsconv-half-frozen, seed 0',
                                 'lsconv-half-frozen, seed 1']
    benchmark.main(arguments + ['--no-train'])
    assert len(evaluated) == 4  # kept
    table = (tmp_path / 'detection_benchmark.md').read_text()
    assert '| 60.0 ± 0.0 |' not in table  # two seeds of fixed: 60 and 70
    assert '(`fixed`) | 2 | 65.0 ± 7.1 | 90.0 | 90.5 / 80.0 | 2.0 |' in table
    assert '(`lsconv-half-frozen`) | 2 | 70.0 ± 0.0 | 90.0 | 95.5 / 85.0 | 2.0 |' in table
    # 95 - 90 and 96 - 91 points: +5.00, no spread, so no p-value
    assert '| `lsconv-half-frozen` | `fixed` | 2 | +5.00 |' in table
    assert '| +5.00 [+5.00, +5.00], p - |' in table
    assert (tmp_path / 'detection_benchmark.png').stat().st_size > 0


def test_benchmark_costs_are_measured_interleaved_and_tabled(tmp_path, monkeypatch):
    """--costs runs tools/detector_costs.py per setting, the settings interleaved, takes
    medians over the repeats, keeps them and prints ratios to the baseline."""
    calls = []

    def fake_run(command, **kwargs):
        setting = next(s for s, (config, _) in suites.SUITES['antialias'].settings.items()
                       if command[2].endswith(config))
        calls.append(setting)
        scale = {'fixed': 1.0, 'blurpool': 3.0}[setting]
        repeat = calls.count(setting)
        Path(command[command.index('--out') + 1]).write_text(json.dumps({
            'backbone_macs': int(100 * scale), 'threads': 2,
            'train_s': [0.1 * scale * repeat] * 3, 'inference_s': [0.01 * scale] * 3,
            'network_s': [0.005 * scale * repeat] * 3}))
        return subprocess.CompletedProcess(command, 0, '')

    monkeypatch.setattr(runner.subprocess, 'run', fake_run)
    costs = runner.measure_costs(['fixed', 'blurpool'], 'antialias', str(tmp_path),
                                 {'fixed': None, 'blurpool': '/x.pth'}, repeats=2, force=False)
    assert calls == ['fixed', 'blurpool', 'fixed', 'blurpool']
    blur = costs['retinanet_r18n-blurpool_digits.py']
    assert blur['train_s_per_iter'] == pytest.approx(0.45)  # median of 0.3 x 3, 0.6 x 3
    assert blur['inference_ms_per_image'] == pytest.approx(30) and blur['checkpoint'] == '/x.pth'
    runner.measure_costs(['fixed', 'blurpool'], 'antialias', str(tmp_path), {}, 2, False)
    assert len(calls) == 4  # kept in costs.json
    rows = [{'setting': 'fixed'}, {'setting': 'blurpool'}]
    table = '\n'.join(report.cost_table(rows, 'antialias', costs))
    assert '| `blurpool` | 300 (3.00x) | 0.450 (3.00x) | 30.0 (3.00x) | 22.5 (3.00x) |' in table
    assert '2 threads' in table

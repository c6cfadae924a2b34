"""The CPU detection benchmark: settings of a detector's backbone, paired on initial weights.

Trains the settings of one suite (a detector on a generated dataset: narrow ResNet-18 (32-256
channels), data made from scikit-learn's, no download; ``--suite``, see SUITES) with mmdet's
train tool, one process per run. Within a seed every setting starts from the same initial
weights (drawn once from the suite's fixed-stride model and given to every run as
``load_from``; the learned stride starts at its setting's value, layers only one setting has
keep their usual initialisation) and sees the same data order, so a per-seed difference
between settings is caused by the settings alone.

The ``digits`` suite (RetinaNet, 128 px digits canvases, ``configs/digits``): ``fixed`` (plain
ResNet), ``lsconv`` (strides learned), ``frozen`` (LSConv frozen at the nominal stride: the
control, equal to ``fixed`` up to float noise), ``dcn`` (mmcv DCN in the same places),
``lsconv-badinit`` and ``frozen-badinit`` (strides start at 1.5, learned or frozen). The others:
``digits-grid`` and ``scaled`` (where the LSConv grid is anchored: corner, centre, learned or
fixed half-pixel phase; DCN), ``antialias``, ``antialias-scaled`` and ``antialias-frcnn`` (the
half-pixel phase, strides frozen or learned, against BlurPool's two placements),
``digits-neck`` (RetinaNet with P3-P7, LSConv in the backbone and the FPN), ``digits-frcnn``
(Faster R-CNN); ``scaled`` means 256 px canvases of 12-96 px digits on photographs
(``configs/scaled_digits``). Every finished run is also evaluated under shifts
(tools/shift_consistency.py, once); ``--costs`` first measures each setting's cost alone
(tools/detector_costs.py). Prints and writes per-setting mean ± std, consistency and s/iter,
per-seed paired differences (mAP and consistency) with 95% confidence intervals and the paired
t-test's p-value, a cost table, a plot, and the suite's section of the study page
(``--readme docs/study.md`` rewrites it in place). Runs whose results exist are reused
(``--force`` retrains).

    python tools/benchmark_detection.py --readme docs/study.md   # the study page
    python tools/benchmark_detection.py --settings fixed lsconv --seeds 0 --other-seeds
    python tools/benchmark_detection.py --suite antialias --seeds 0 1 2 --costs
"""
import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from mmlstride.engine import PHASE_PREFIX, find_scalars_json, read_stride_trajectories
from mmlstride.engine.stride_logger_hook import PREFIX as STRIDE_PREFIX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Suite:
    """One comparison: settings (name -> (config in ``configs/<folder>``, description)) of
    one detector on one dataset. ``baseline`` draws the initial weights and every other
    setting is paired with it; ``controls`` pairs a learned setting with its frozen control
    as well, and ``against_corner`` each grid variant with the corner-pivot LSConv;
    ``paired`` are the main settings (``--seeds``), the others get ``--other-seeds``. A suite
    with ``runs_of`` trains and reads its runs (and initial weights) where that suite does,
    so the two share the runs of the settings they have in common. ``pairs`` are further
    comparisons, (setting, minus setting)."""
    folder: str
    title: str
    settings: Dict[str, Tuple[str, str]]
    paired: Tuple[str, ...]
    controls: Dict[str, str] = field(default_factory=dict)
    against_corner: Tuple[str, ...] = ()
    baseline: str = 'fixed'
    runs_of: Optional[str] = None
    pairs: Tuple[Tuple[str, str], ...] = ()


SUITES = {
    'digits': Suite('digits', 'RetinaNet, digits (128 px)', {
        'fixed': ('retinanet_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_digits.py', 'LSConv, strides learned'),
        'frozen': ('retinanet_r18n-ls-frozen_digits.py',
                   'LSConv, strides frozen at the nominal 2 (control)'),
        'dcn': ('retinanet_r18n-dcn_digits.py', 'mmcv DCN, same places'),
        'lsconv-badinit': ('retinanet_r18n-ls-badinit_digits.py',
                           'LSConv, strides start at 1.5, learned'),
        'frozen-badinit': ('retinanet_r18n-ls-badinit-frozen_digits.py',
                           'LSConv, strides start at 1.5, frozen'),
    }, paired=('fixed', 'lsconv', 'frozen'),
        # Learned strides against the same LSConv frozen at their start: only the learning
        # differs.
        controls={'lsconv': 'frozen', 'lsconv-badinit': 'frozen-badinit'}),
    # Where the learned grid is anchored (corner, centre, learned phase) against fixed strides
    # and DCN, on the digits suite's runs.
    'digits-grid': Suite('digits', 'RetinaNet, digits (128 px): where the grid is anchored', {
        'fixed': ('retinanet_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_digits.py', 'LSConv, corner grid (pivot corner)'),
        'lsconv-centre': ('retinanet_r18n-ls-centre_digits.py',
                          'LSConv, grid stretching about the centre (pivot centre)'),
        'lsconv-phase': ('retinanet_r18n-ls-phase_digits.py',
                         'LSConv, corner grid with a learned phase'),
        'lsconv-half': ('retinanet_r18n-ls-half_digits.py',
                        'LSConv, phase fixed at half a pixel, strides learned (control)'),
        'dcn': ('retinanet_r18n-dcn_digits.py', 'mmcv DCN, same places'),
    }, paired=('fixed', 'lsconv', 'dcn'),
        against_corner=('lsconv-centre', 'lsconv-phase', 'lsconv-half', 'dcn'),
        # The learned phase against the same phase frozen at half a pixel: anti-aliasing?
        controls={'lsconv-phase': 'lsconv-half'}, runs_of='digits'),
    'digits-neck': Suite('digits', 'RetinaNet with P3-P7, digits (128 px)', {
        'fixed': ('retinanet_r18n-p6p7_digits_fixed.py', 'fixed integer strides'),
        'lsconv-neck': ('retinanet_r18n-ls-neck_digits.py',
                        'LSConv in the backbone and every FPN conv, strides learned'),
    }, paired=('fixed', 'lsconv-neck')),
    'digits-frcnn': Suite('digits', 'Faster R-CNN, digits (128 px)', {
        'fixed': ('faster-rcnn_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('faster-rcnn_r18n-ls_digits.py', 'LSConv, corner grid (pivot corner)'),
        'lsconv-phase': ('faster-rcnn_r18n-ls-phase_digits.py',
                         'LSConv, corner grid with a learned phase'),
        'dcn': ('faster-rcnn_r18n-dcn_digits.py', 'mmcv DCN, same places'),
    }, paired=('fixed', 'lsconv', 'lsconv-phase', 'dcn'),
        against_corner=('lsconv-phase', 'dcn')),
    'scaled': Suite('scaled_digits', 'RetinaNet, scaled digits (256 px)', {
        'fixed': ('retinanet_r18n_scaled-digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_scaled-digits.py', 'LSConv, corner grid (pivot corner)'),
        'dcn': ('retinanet_r18n-dcn_scaled-digits.py', 'mmcv DCN, same places'),
        'lsconv-centre': ('retinanet_r18n-ls-centre_scaled-digits.py',
                          'LSConv, grid stretching about the centre (pivot centre)'),
        'lsconv-phase': ('retinanet_r18n-ls-phase_scaled-digits.py',
                         'LSConv, corner grid with a learned phase'),
        'lsconv-half': ('retinanet_r18n-ls-half_scaled-digits.py',
                        'LSConv, phase fixed at half a pixel, strides learned (control)'),
    }, paired=('fixed', 'lsconv'),  # DCN costs 2.3x LSConv at 256 px: --other-seeds
        against_corner=('lsconv-centre', 'lsconv-phase', 'lsconv-half', 'dcn'),
        controls={'lsconv-phase': 'lsconv-half'}),
}
# LSConv against fixed anti-aliasing, on the runs of the suites above: the op's half-pixel
# phase (fixed, strides frozen or learned; or learned) against BlurPool's two placements.
ANTIALIAS_SETTINGS = {
    'lsconv-half-frozen': ('ls-half-frozen', 'LSConv, phase fixed at half a pixel, strides frozen'),
    'lsconv-half': ('ls-half', 'LSConv, phase fixed at half a pixel, strides learned'),
    'blurpool': ('blurpool', 'BlurPool: conv at stride 1, then blur and subsample'),
    'blurfirst': ('blurfirst', 'blur-first: blur at stride 1, then the strided conv'),
}
ANTIALIAS_CONTROLS = {'lsconv-half': 'lsconv-half-frozen', 'lsconv-phase': 'lsconv-half'}
ANTIALIAS_PAIRS = (('blurpool', 'lsconv-half-frozen'), ('blurfirst', 'lsconv-half-frozen'),
                   ('blurpool', 'lsconv-half'), ('blurpool', 'blurfirst'))


def antialias_suite(of: str, title: str, prefix: str, suffix: str) -> Suite:
    """The anti-aliasing comparison on the runs of suite ``of`` (configs named
    ``<prefix>-<variant><suffix>``)."""
    base = SUITES[of].settings
    settings = {name: base[name] for name in ('fixed', 'lsconv', 'lsconv-phase') if name in base}
    settings.update({name: (f'{prefix}-{variant}{suffix}', description)
                     for name, (variant, description) in ANTIALIAS_SETTINGS.items()})
    return Suite(SUITES[of].folder, title, settings, paired=('fixed',),
                 controls={k: v for k, v in ANTIALIAS_CONTROLS.items() if k in settings},
                 against_corner=('lsconv-half-frozen', 'lsconv-half', 'blurpool', 'blurfirst'),
                 runs_of=SUITES[of].runs_of or of, pairs=ANTIALIAS_PAIRS)


SUITES['antialias'] = antialias_suite(
    'digits-grid', 'RetinaNet, digits (128 px): LSConv against fixed anti-aliasing',
    'retinanet_r18n', '_digits.py')
SUITES['antialias-scaled'] = antialias_suite(
    'scaled', 'RetinaNet, scaled digits (256 px): LSConv against fixed anti-aliasing',
    'retinanet_r18n', '_scaled-digits.py')
SUITES['antialias-frcnn'] = antialias_suite(
    'digits-frcnn', 'Faster R-CNN, digits (128 px): LSConv against fixed anti-aliasing',
    'faster-rcnn_r18n', '_digits.py')
DEFAULT_SUITE = 'digits'
SETTINGS = SUITES[DEFAULT_SUITE].settings
PROGRESS_MARKS = ('bbox_mAP_copypaste', 'Traceback', 'Error:')
CONSISTENCY_FILE = 'shift_consistency.json'
COSTS_FILE = 'costs.json'


def readme_markers(suite: str = DEFAULT_SUITE) -> Tuple[str, str]:
    """The comments around a suite's section of the README (the digits suite keeps its
    original ones)."""
    name = 'detection-benchmark' if suite == DEFAULT_SUITE else f'detection-benchmark:{suite}'
    option = '' if suite == DEFAULT_SUITE else f' --suite {suite}'
    return (f'<!-- {name}:start (tools/benchmark_detection.py{option} --readme) -->',
            f'<!-- {name}:end -->')


README_START, README_END = readme_markers()


def config_path(setting: str, suite: str = DEFAULT_SUITE) -> str:
    return os.path.join(REPO, 'configs', SUITES[suite].folder, SUITES[suite].settings[setting][0])


def parse_cfg_options(options: Sequence[str]) -> dict:
    """``key=value`` overrides parsed as mmdet's train tool parses ``--cfg-options``."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args(['--cfg-options', *options] if options else []).cfg_options


def write_initial_weights(seed: int, path: str, cfg_options: Sequence[str] = (),
                          suite: str = DEFAULT_SUITE) -> str:
    """Draws the suite's baseline detector's initial weights for ``seed`` (with the runs'
    overrides) and saves them as a checkpoint every setting of that seed loads (mmengine's
    ``load_from``)."""
    import torch
    from mmengine.config import Config
    from mmengine.runner import set_random_seed
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    import mmlstride  # noqa: F401  (registrations)
    baseline = SUITES[suite].baseline
    cfg = Config.fromfile(config_path(baseline, suite))
    cfg.merge_from_dict(parse_cfg_options(cfg_options))
    set_random_seed(seed)
    model = MODELS.build(cfg.model)
    logging.disable(logging.INFO)  # mmengine logs every parameter's initialiser
    try:
        model.init_weights()
    finally:
        logging.disable(logging.NOTSET)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'state_dict': model.state_dict(),
                'meta': {'seed': seed, 'drawn_by': SUITES[suite].settings[baseline][0]}}, path)
    return path


def mmdet_train_script() -> str:
    """mmdet's tools/train.py as installed with the package (what ``mim train mmdet`` runs)."""
    import mmdet
    return os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')


def seed_options(seed: int, initial_weights: str) -> List[str]:
    """The ``--cfg-options`` that pair a run with the other settings of its seed."""
    return [f'randomness.seed={seed}', f'load_from={initial_weights}']


def train_command(setting: str, work_dir: str, seed: int, initial_weights: str,
                  extra: Sequence[str], suite: str = DEFAULT_SUITE) -> List[str]:
    return [sys.executable, mmdet_train_script(), config_path(setting, suite), '--work-dir', work_dir,
            '--cfg-options', *seed_options(seed, initial_weights), *extra]


def train(command: List[str], label: str, work_dir: str, threads: Optional[int]) -> None:
    """One training run in its own process; its result lines echoed with ``label``."""
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, 'train.log'), 'w') as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            env=env) as process:
        for line in process.stdout:
            log.write(line)
            if any(mark in line for mark in PROGRESS_MARKS):
                print(f'   {label}:', line.rstrip().split(' - mmengine - ')[-1][:150],
                      flush=True)
    if process.returncode:
        raise RuntimeError(f'{label} failed with exit code {process.returncode}; see '
                           f'{work_dir}/train.log')


def checkpoint_of(run_dir: str) -> Optional[str]:
    """The final checkpoint of a finished run (mmengine's ``last_checkpoint``), if any."""
    pointer = os.path.join(run_dir, 'last_checkpoint')
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        path = f.read().strip()
    return path if os.path.exists(path) else None


def evaluate_shifts(run_dir: str, setting: str, label: str, threads: Optional[int],
                    suite: str = DEFAULT_SUITE) -> None:
    """Shift consistency of a finished run (tools/shift_consistency.py on its saved config
    and final checkpoint), written to ``CONSISTENCY_FILE`` in its folder."""
    command = [sys.executable, os.path.join(REPO, 'tools', 'shift_consistency.py'),
               os.path.join(run_dir, SUITES[suite].settings[setting][0]), checkpoint_of(run_dir),
               '--out', os.path.join(run_dir, CONSISTENCY_FILE)]
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    with open(os.path.join(run_dir, 'shift_consistency.log'), 'w') as log:
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if process.returncode:
        raise RuntimeError(f'{label}: shift consistency failed with exit code '
                           f'{process.returncode}; see {run_dir}/shift_consistency.log')


def measure_costs(settings: Sequence[str], suite: str, work_dir: str,
                  checkpoints: Dict[str, Optional[str]], repeats: int, force: bool) -> dict:
    """Backbone multiply-adds, training s/iter, inference and network ms/image of each setting
    (tools/detector_costs.py, one process at a time with every core, the settings
    interleaved ``repeats`` times; times are medians over all repeats), kept by config in
    ``COSTS_FILE`` of ``work_dir``; inference uses ``checkpoints[setting]`` where given."""
    path = os.path.join(work_dir, COSTS_FILE)
    costs = {}
    if os.path.exists(path):
        with open(path) as f:
            costs = json.load(f)
    todo = [s for s in settings if force or SUITES[suite].settings[s][0] not in costs]
    samples: Dict[str, List[dict]] = {s: [] for s in todo}
    for repeat in range(repeats):
        for setting in todo:
            print(f'== {setting}: costs, repeat {repeat + 1} of {repeats}', flush=True)
            out = os.path.join(work_dir, f'.costs-{setting}.json')
            command = [sys.executable, os.path.join(REPO, 'tools', 'detector_costs.py'),
                       config_path(setting, suite), '--out', out]
            if checkpoints.get(setting):
                command += ['--checkpoint', checkpoints[setting]]
            env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
            process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=REPO, env=env)
            if process.returncode:
                raise RuntimeError(f'{setting}: tools/detector_costs.py failed:\n'
                                   f'{process.stdout[-3000:]}')
            with open(out) as f:
                samples[setting].append(json.load(f))
            os.remove(out)
    for setting, measured in samples.items():
        costs[SUITES[suite].settings[setting][0]] = {
            'backbone_macs': measured[0]['backbone_macs'], 'threads': measured[0]['threads'],
            'repeats': repeats, 'checkpoint': checkpoints.get(setting),
            'train_s_per_iter': statistics.median(t for m in measured for t in m['train_s']),
            'inference_ms_per_image': 1000 * statistics.median(
                t for m in measured for t in m['inference_s']),
            'network_ms_per_image': 1000 * statistics.median(
                t for m in measured for t in m['network_s'])}
    os.makedirs(work_dir, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(costs, f, indent=1)
    return costs


def run_is_paired(run_dir: str, setting: str, seed: int, initial_weights: str,
                  cfg_options: Sequence[str], suite: str = DEFAULT_SUITE) -> bool:
    """Whether the run in ``run_dir`` was trained with this seed, these initial weights and
    these overrides, as the config mmengine saved there says."""
    from mmengine.config import Config
    saved = os.path.join(run_dir, SUITES[suite].settings[setting][0])
    if not os.path.exists(saved):
        return False
    cfg = Config.fromfile(saved)
    expected = {'randomness.seed': seed, 'load_from': initial_weights,
                **parse_cfg_options(cfg_options)}
    for key, value in expected.items():
        node = cfg
        for part in key.split('.'):
            node = node.get(part) if hasattr(node, 'get') else None
        if node != value:
            return False
    return True


def read_run(work_dir: str) -> Optional[dict]:
    """bbox mAP, seconds per training iteration, final strides and learned phases of a
    finished run; where it was evaluated under shifts, its consistency (percent of objects
    whose match is unchanged, over whole-pixel and half-pixel shifts) and mAP spread."""
    path = find_scalars_json(work_dir)
    if path is None:
        return None
    maps, times = [], []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if 'coco/bbox_mAP' in record:
                maps.append(record)
            elif 'time' in record and 'loss' in record:
                times.append(record['time'])
    if not maps:
        # A finished run whose detector predicted nothing above the score threshold has no
        # metrics (mmdet logs "results ... empty"): its mAP is 0.
        if not os.path.exists(os.path.join(work_dir, 'last_checkpoint')):
            return None
        maps = [{'coco/bbox_mAP': 0.0, 'coco/bbox_mAP_50': 0.0}]
    strides, phases = ({layer: (axes['h'][-1][1], axes['w'][-1][1])
                        for layer, axes in read_stride_trajectories(path, prefix).items()}
                       for prefix in (STRIDE_PREFIX, PHASE_PREFIX))
    shifts = {}
    if os.path.exists(os.path.join(work_dir, CONSISTENCY_FILE)):
        with open(os.path.join(work_dir, CONSISTENCY_FILE)) as f:
            evaluated = json.load(f)
        shifts = {'consistency': 100 * evaluated['whole']['consistency'],
                  'consistency_half': 100 * evaluated['fractional']['consistency'],
                  'mAP_spread': evaluated['whole']['mAP_spread']}
    return {'bbox_mAP': 100 * maps[-1]['coco/bbox_mAP'],
            'bbox_mAP_50': 100 * maps[-1]['coco/bbox_mAP_50'],
            'seconds_per_iter': statistics.median(times) if times else None,
            'final_strides': strides, 'final_phases': phases, 'scalars': path, **shifts}


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (two-sided 95%)."""
    from scipy.stats import t
    return float(t.ppf(0.975, dof))


def mean_and_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t; NaN for one
    value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float('nan')
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def paired_t_test(differences: Sequence[float]) -> float:
    """Two-sided p-value of Student's paired t-test that the mean difference is 0 (NaN for
    fewer than two seeds or differences that are all equal)."""
    from scipy.stats import ttest_1samp
    if len(differences) < 2 or len(set(differences)) < 2:
        return float('nan')
    return float(ttest_1samp(differences, 0.0).pvalue)


def paired_difference(runs: Dict[str, Dict[int, dict]], setting: str, against: str,
                      metric: str = 'bbox_mAP') -> Optional[dict]:
    """``metric`` of ``setting`` minus ``against`` on each seed both have: mean, 95% CI and
    the paired t-test's p-value; with ``metric`` bbox_mAP, the same for the shift
    consistency under ``consistency`` where every paired run has it."""
    shared = sorted(set(runs.get(setting, {})) & set(runs.get(against, {})))
    if not shared:
        return None
    diffs = [runs[setting][s][metric] - runs[against][s][metric] for s in shared]
    mean, half = mean_and_ci(diffs)
    pair = {'setting': setting, 'against': against, 'seeds': shared, 'differences': diffs,
            'mean': mean, 'ci95': half, 'p_value': paired_t_test(diffs)}
    if metric == 'bbox_mAP' and all('consistency' in runs[name][seed]
                                    for name in (setting, against) for seed in shared):
        pair['consistency'] = paired_difference(runs, setting, against, 'consistency')
    return pair


def summarise(runs: Dict[str, Dict[int, dict]],
              suite: str = DEFAULT_SUITE) -> Tuple[List[dict], List[dict]]:
    """Per-setting rows (mean ± std over seeds) and paired differences against the baseline,
    then of each learned setting against its frozen control."""
    rows, pairs = [], []
    for setting, by_seed in runs.items():
        results = list(by_seed.values())
        maps = [r['bbox_mAP'] for r in results]
        times = [r['seconds_per_iter'] for r in results if r['seconds_per_iter'] is not None]
        layers = results[0]['final_strides'].keys()
        phase_layers = results[0].get('final_phases', {}).keys()
        rows.append({
            'setting': setting, 'seeds': sorted(by_seed),
            'bbox_mAP_mean': statistics.mean(maps),
            'bbox_mAP_std': statistics.stdev(maps) if len(maps) > 1 else 0.0,
            'bbox_mAP_50_mean': statistics.mean(r['bbox_mAP_50'] for r in results),
            'seconds_per_iter': statistics.median(times) if times else None,
            **{f'{key}_mean': statistics.mean(r[key] for r in results)
               for key in ('consistency', 'consistency_half', 'mAP_spread')
               if all(key in r for r in results)},
            'final_strides_mean': {layer: [statistics.mean(r['final_strides'][layer][axis]
                                                           for r in results) for axis in (0, 1)]
                                   for layer in layers},
            # Their sign differs between seeds: the mean size says how far they move.
            'final_phases_abs_mean': {layer: [statistics.mean(abs(r['final_phases'][layer][axis])
                                                              for r in results) for axis in (0, 1)]
                                      for layer in phase_layers},
        })
    baseline, controls = SUITES[suite].baseline, SUITES[suite].controls
    for against, settings in ((baseline, [s for s in runs if s != baseline]),
                              *((control, [learned]) for learned, control in controls.items()),
                              ('lsconv', SUITES[suite].against_corner),
                              *((against, [setting]) for setting, against in SUITES[suite].pairs)):
        pairs += [p for p in (paired_difference(runs, s, against) for s in settings) if p]
    return rows, pairs


def confidence_cells(pair: dict) -> Tuple[str, str]:
    """A paired difference's 95% CI and p-value as table cells ('-' for one seed)."""
    low, high = pair['mean'] - pair['ci95'], pair['mean'] + pair['ci95']
    interval = '-' if len(pair['seeds']) < 2 else f'[{low:+.2f}, {high:+.2f}]'
    p_value = '-' if pair['p_value'] != pair['p_value'] else f"{pair['p_value']:.3f}"
    return interval, p_value


def cost_table(rows: List[dict], suite: str, costs: dict) -> List[str]:
    """Lines of the cost table of the settings in ``rows`` that have costs, with ratios to
    the baseline's."""
    names = {row['setting']: SUITES[suite].settings[row['setting']][0] for row in rows}
    measured = {setting: costs[name] for setting, name in names.items() if name in costs}
    if not measured:
        return []
    base = measured.get(SUITES[suite].baseline)
    threads = sorted({c['threads'] for c in measured.values()})
    lines = ['', f'Cost, measured alone (one process, {"/".join(map(str, threads))} threads; '
             'medians; ratios to the baseline):', '',
             '| setting | backbone multiply-adds per image | train s/iter | inference ms/image '
             '| network ms/image |', '|---|---|---|---|---|']

    def cell(setting: str, key: str, form: str) -> str:
        value = measured[setting][key]
        ratio = f' ({value / base[key]:.2f}x)' if base else ''
        return format(value, form) + ratio

    for setting in measured:
        lines.append(f"| `{setting}` | {cell(setting, 'backbone_macs', ',')} | "
                     f"{cell(setting, 'train_s_per_iter', '.3f')} | "
                     f"{cell(setting, 'inference_ms_per_image', '.1f')} | "
                     f"{cell(setting, 'network_ms_per_image', '.1f')} |")
    return lines


def markdown(rows: List[dict], pairs: List[dict], runs: Dict[str, Dict[int, dict]],
             suite: str = DEFAULT_SUITE, costs: Optional[dict] = None) -> str:
    """The tables of the suite's README section (with ``costs``, by config, a cost table)."""
    lines = ['| setting | seeds | bbox mAP (mean ± std) | mAP@50 | consistency %, whole / half '
             'px | mAP spread over shifts | s/iter | final strides (s_h, s_w), learned layers '
             'in order | final learned phases, mean size (\\|t_h\\|, \\|t_w\\|) |',
             '|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        strides = ' '.join(f'({h:.2f}, {w:.2f})' for h, w in row['final_strides_mean'].values())
        phases = ' '.join(f'({h:.2f}, {w:.2f})'
                          for h, w in row.get('final_phases_abs_mean', {}).values())
        seconds = '-' if row['seconds_per_iter'] is None else f"{row['seconds_per_iter']:.2f}"
        consistency = (f"{row['consistency_mean']:.1f} / {row['consistency_half_mean']:.1f}"
                       if 'consistency_mean' in row else '-')
        spread = f"{row['mAP_spread_mean']:.1f}" if 'mAP_spread_mean' in row else '-'
        lines.append(f"| {SUITES[suite].settings[row['setting']][1]} (`{row['setting']}`) | "
                     f"{len(row['seeds'])} | {row['bbox_mAP_mean']:.1f} ± "
                     f"{row['bbox_mAP_std']:.1f} | {row['bbox_mAP_50_mean']:.1f} | "
                     f"{consistency} | {spread} | {seconds} | {strides or '-'} | "
                     f"{phases or '-'} |")
    lines += ['', 'Paired on seed (same initial weights, same data order):', '',
              '| setting | minus | seeds | mean difference (bbox mAP) | 95% CI | p (paired t) '
              '| per seed | consistency difference (points), 95% CI, p |',
              '|---|---|---|---|---|---|---|---|']
    for pair in pairs:
        interval, p_value = confidence_cells(pair)
        per_seed = ', '.join(f'{d:+.1f}' for d in pair['differences'])
        consistency = '-'
        if 'consistency' in pair:
            c_interval, c_p = confidence_cells(pair['consistency'])
            consistency = f"{pair['consistency']['mean']:+.2f} {c_interval}, p {c_p}"
        lines.append(f"| `{pair['setting']}` | `{pair['against']}` | {len(pair['seeds'])} | "
                     f"{pair['mean']:+.2f} | {interval} | {p_value} | {per_seed} | "
                     f"{consistency} |")
    lines += cost_table(rows, suite, costs or {})
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    lines += ['', 'bbox mAP per seed:', '',
              '| seed | ' + ' | '.join(f'`{s}`' for s in runs) + ' |',
              '|---' * (len(runs) + 1) + '|']
    for seed in seeds:
        cells = [f"{runs[s][seed]['bbox_mAP']:.1f}" if seed in runs[s] else '' for s in runs]
        lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows: List[dict], pairs: List[dict], runs: Dict[str, Dict[int, dict]],
         path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    learned = [s for s in runs if next(iter(runs[s].values()))['final_strides']
               and 'frozen' not in s]
    shifted = [r for r in rows if 'consistency_mean' in r]
    panels = 2 + bool(shifted) + len(learned)
    columns = min(panels, 3)
    lines = -(-panels // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(5.5 * columns, 4.2 * lines), squeeze=False)
    axes = grid.ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    names = [r['setting'] for r in rows]
    axes[0].bar(names, [r['bbox_mAP_mean'] for r in rows],
                yerr=[r['bbox_mAP_std'] for r in rows], capsize=4, color='tab:blue')
    for x, setting in enumerate(names):
        maps = [r['bbox_mAP'] for r in runs[setting].values()]
        axes[0].plot([x] * len(maps), maps, 'k.')
    axes[0].set_ylabel('bbox mAP (%)')
    axes[0].set_title('mean ± std over seeds')
    axes[0].tick_params(axis='x', rotation=30)
    shown = [p for p in pairs if abs(p['mean']) < 20]  # a collapse would squash the others
    for y, pair in enumerate(shown):
        axes[1].errorbar(pair['mean'], y, xerr=pair['ci95'], fmt='o', capsize=4)
        axes[1].plot(pair['differences'], [y] * len(pair['differences']), 'k.', alpha=0.5)
    axes[1].axvline(0, color='grey', linewidth=1)
    axes[1].set_yticks(range(len(shown)), [f"{p['setting']} - {p['against']}" for p in shown])
    axes[1].set_xlabel('bbox mAP difference, same seed')
    axes[1].set_title('paired differences, mean and 95% CI')
    if shifted:
        ax = axes[2]
        for index, row in enumerate(shifted):
            seeds = list(runs[row['setting']].values())
            ax.plot([r['consistency'] for r in seeds], [r['bbox_mAP'] for r in seeds], '.',
                    color=f'C{index}', alpha=0.5)
            ax.plot(row['consistency_mean'], row['bbox_mAP_mean'], 'o', color=f'C{index}',
                    label=row['setting'])
        ax.set_xlabel('shift consistency, whole pixels (%)')
        ax.set_ylabel('bbox mAP (%)')
        ax.set_title('mAP against consistency (dots: seeds)')
        ax.legend(fontsize=7)
    for ax, setting in zip(axes[2 + bool(shifted):], learned):
        scalars = next(iter(runs[setting].values()))['scalars']
        trajectories = read_stride_trajectories(scalars)
        for index, (layer, series) in enumerate(trajectories.items()):
            colour = f'C{index}'
            label = layer.replace('backbone.', '')
            ax.plot(*zip(*series['h']), color=colour, label=f'{label} s_h')
            ax.plot(*zip(*series['w']), color=colour, linestyle='--', label=f'{label} s_w')
        ax.set_xlabel('iteration')
        ax.set_ylabel('learned stride (pixels)')
        phases = read_stride_trajectories(scalars, PHASE_PREFIX)
        if phases:  # on a second axis, dotted
            twin = ax.twinx()
            for index, (layer, series) in enumerate(phases.items()):
                twin.plot(*zip(*series['h']), color=f'C{index}', linestyle=':')
                twin.plot(*zip(*series['w']), color=f'C{index}', linestyle='-.')
            twin.set_ylabel('learned phase (pixels): t_h dotted, t_w dash-dot')
        ax.set_title(f'{setting}: strides{" and phases" if phases else ""} (first seed)')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rewrite_readme(path: str, section: str, suite: str = DEFAULT_SUITE) -> None:
    """Replaces the text between the suite's benchmark markers of ``path`` with ``section``."""
    marker_start, marker_end = readme_markers(suite)
    with open(path) as f:
        text = f.read()
    start, end = text.find(marker_start), text.find(marker_end)
    if start < 0 or end < start:
        raise ValueError(f'{path} expected the markers {marker_start!r} and {marker_end!r}')
    with open(path, 'w') as f:
        f.write(text[:start + len(marker_start)] + '\n' + section + '\n' + text[end:])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suite', default=DEFAULT_SUITE, choices=list(SUITES),
                        help='the detector and dataset: ' + '; '.join(
                            f'{name}: {suite.title}' for name, suite in SUITES.items()))
    parser.add_argument('--settings', nargs='+',
                        help='some of the suite\'s settings (default: all of them)')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(range(8)),
                        help='seeds of the suite\'s main settings (digits: fixed, lsconv, '
                             'frozen; the other suites: all)')
    parser.add_argument('--other-seeds', nargs='*', type=int, default=[0, 1, 2],
                        help='seeds of the other settings')
    parser.add_argument('--jobs', type=int, default=1,
                        help='training processes at once (each gets cores / jobs threads)')
    parser.add_argument('--work-dir', default='work_dirs/detection_benchmark')
    parser.add_argument('--force', action='store_true', help='retrain runs that have results')
    parser.add_argument('--no-train', action='store_true',
                        help='train nothing: tables of the finished runs of the plan only')
    parser.add_argument('--no-consistency', action='store_true',
                        help='do not evaluate finished runs under shifts (tools/'
                             'shift_consistency.py; each run once, its result kept)')
    parser.add_argument('--costs', action='store_true',
                        help='first measure each setting\'s cost (backbone multiply-adds, '
                             'training s/iter, inference ms/image; tools/detector_costs.py), '
                             'one at a time, before any training: run it with nothing else on '
                             'the machine; kept in costs.json (--force measures again)')
    parser.add_argument('--cost-repeats', type=int, default=2,
                        help='times each setting\'s cost is measured, interleaved')
    parser.add_argument('--readme',
                        help='rewrite the suite\'s section of this page (docs/study.md)')
    parser.add_argument('--figure',
                        help='also copy the plot here (e.g. the study page\'s figure)')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra key=value overrides for every run, e.g. train_cfg.max_iters=200')
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    settings = args.settings or list(suite.settings)
    unknown = [s for s in settings if s not in suite.settings]
    if unknown:
        parser.error(f'--settings {" ".join(unknown)}: expected some of {list(suite.settings)} '
                     f'for --suite {args.suite}')
    runs_of = suite.runs_of or args.suite
    work_dir = os.path.abspath(args.work_dir if runs_of == DEFAULT_SUITE
                               else os.path.join(args.work_dir, runs_of))
    plan = [(setting, seed) for setting in settings
            for seed in (args.seeds if setting in suite.paired else args.other_seeds)]
    weights = {seed: os.path.join(work_dir, 'initial_weights', f'seed{seed}.pth')
               for seed in sorted({seed for _, seed in plan})}
    if args.cost_repeats < 1:
        parser.error(f'--cost-repeats {args.cost_repeats}: expected >= 1')
    if args.no_train and args.force:
        parser.error('--no-train and --force: expected one of them')
    for seed, path in weights.items():
        if not args.no_train and (args.force or not os.path.exists(path)):
            write_initial_weights(seed, path, args.cfg_options, args.suite)
    run_dir = {key: os.path.join(work_dir, key[0], f'seed{key[1]}') for key in plan}
    # A finished run is reused only if it was trained as this plan would train it. Training
    # goes seed by seed, so that a study stopped part-way holds whole pairs.
    todo = [key for key in sorted(plan, key=lambda key: (key[1], settings.index(key[0])))
            if args.force or read_run(run_dir[key]) is None or not run_is_paired(
                run_dir[key], key[0], key[1], weights[key[1]], args.cfg_options, args.suite)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    if args.no_train:
        for key in todo:
            print(f'-- {key[0]}, seed {key[1]}: no finished run trained as planned, left out')
        plan = [key for key in plan if key not in todo]
        todo = []
        if not plan:
            parser.error(f'--no-train: no finished run of {" ".join(settings)} in {work_dir}')

    costs_path = os.path.join(work_dir, COSTS_FILE)
    if args.costs:
        # Inference is timed with the trained weights of a setting's first finished seed.
        first = {setting: next((checkpoint_of(run_dir[key]) for key in sorted(
            run_dir, key=lambda key: key[1]) if key[0] == setting and checkpoint_of(run_dir[key])),
            None) for setting in settings}
        measure_costs([s for s in settings if any(key[0] == s for key in plan)], args.suite,
                      work_dir, first, args.cost_repeats, args.force)
    costs = {}
    if os.path.exists(costs_path):
        with open(costs_path) as f:
            costs = json.load(f)

    def evaluate(key):
        label = f'{key[0]}, seed {key[1]}'
        print(f'== {label}: shift consistency', flush=True)
        evaluate_shifts(run_dir[key], key[0], label, threads, args.suite)

    def run(key):
        setting, seed = key
        label = f'{setting}, seed {seed}'
        print(f'== {label}: training {suite.settings[setting][0]}', flush=True)
        if os.path.exists(os.path.join(run_dir[key], CONSISTENCY_FILE)):  # of an older run
            os.remove(os.path.join(run_dir[key], CONSISTENCY_FILE))
        start = time.time()
        train(train_command(setting, run_dir[key], seed, weights[seed], args.cfg_options,
                            args.suite), label, run_dir[key], threads)
        print(f'   {label}: done in {time.time() - start:.0f} s', flush=True)
        if not args.no_consistency and checkpoint_of(run_dir[key]):
            evaluate(key)

    # Every finished run of the plan is evaluated under shifts once (its checkpoint kept).
    unevaluated = [] if args.no_consistency else [
        key for key in plan if key not in todo and checkpoint_of(run_dir[key])
        and not os.path.exists(os.path.join(run_dir[key], CONSISTENCY_FILE))]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(evaluate, unevaluated))
        list(pool.map(run, todo))
    runs: Dict[str, Dict[int, dict]] = {}
    for key in plan:
        result = read_run(run_dir[key])
        if result is None:
            raise RuntimeError(f'{key[0]}, seed {key[1]}: no result in {run_dir[key]}')
        runs.setdefault(key[0], {})[key[1]] = result
    rows, pairs = summarise(runs, args.suite)
    table = markdown(rows, pairs, runs, args.suite, costs)
    print(table)
    png = os.path.join(work_dir, 'detection_benchmark.png')
    plot(rows, pairs, runs, png)
    with open(os.path.join(work_dir, 'detection_benchmark.json'), 'w') as f:
        json.dump({'suite': args.suite, 'rows': rows, 'pairs': pairs, 'runs': runs,
                   'costs': costs, 'table': table, 'cfg_options': args.cfg_options}, f, indent=1)
    with open(os.path.join(work_dir, 'detection_benchmark.md'), 'w') as f:
        f.write(table + '\n')
    if args.readme:
        rewrite_readme(args.readme, table, args.suite)
    if args.figure:
        shutil.copyfile(png, args.figure)
    print(f'wrote {png}, detection_benchmark.json and .md in {work_dir}'
          + (f'; rewrote the benchmark section of {args.readme}' if args.readme else ''))


if __name__ == '__main__':
    main()

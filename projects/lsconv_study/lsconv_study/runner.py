"""Training and evaluating the study's runs: initial weights drawn once per seed, one mmdet
training process per run, shift consistency and costs of finished runs, and reading a run's
results back."""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from mmlstride.engine import PHASE_PREFIX, find_scalars_json, read_stride_trajectories
from mmlstride.engine.stride_logger_hook import PREFIX as STRIDE_PREFIX

from .suites import DEFAULT_SUITE, SUITES, config_path

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PROJECT))


def environment(threads: Optional[int] = None) -> Dict[str, str]:
    """This process's environment for a run's process: the repository on PYTHONPATH (the
    configs import ``projects.lsconv_study.lsconv_study``), and ``threads`` OpenMP threads
    where given."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    return env


PROGRESS_MARKS = ('bbox_mAP_copypaste', 'Traceback', 'Error:')
CONSISTENCY_FILE = 'shift_consistency.json'
COSTS_FILE = 'costs.json'


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
    import mmlstride  # noqa: F401  (registrations; this package's are made on its import)
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
    """mmdet's training of a suite's setting, paired on seed."""
    return [sys.executable, mmdet_train_script(), config_path(setting, suite), '--work-dir',
            work_dir, '--cfg-options', *seed_options(seed, initial_weights), *extra]


def train(command: List[str], label: str, work_dir: str, threads: Optional[int]) -> None:
    """One training run in its own process; its result lines echoed with ``label``."""
    env = environment(threads)
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
    env = environment(threads)
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
            env = environment()
            env.pop('OMP_NUM_THREADS', None)
            process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=REPO, env=env)
            if process.returncode:
                raise RuntimeError(f'{setting}: detector_costs.py failed:\n'
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

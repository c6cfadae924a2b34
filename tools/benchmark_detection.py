"""The CPU detection benchmark: fixed strides, LSConv, DCN, and bad initial strides learned or frozen.

Trains the configs of ``configs/digits`` (RetinaNet, narrow ResNet-18 (32-256 channels), 128 px
digits canvases generated from scikit-learn's data, no download) with mmdet's
train tool, one process per run, for each setting and seed. Then prints and
writes a table of bbox mAP (mean and spread over seeds), training time per
iteration and final learned strides, and a plot (mAP per setting, stride
trajectories). Runs whose results exist are reused (``--force`` retrains).

    python tools/benchmark_detection.py                  # 5 settings x 3 seeds
    python tools/benchmark_detection.py --settings fixed lsconv --seeds 0
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from mmlstride.engine import find_scalars_json, read_stride_trajectories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    'fixed': 'retinanet_r18n_digits_fixed.py',
    'lsconv': 'retinanet_r18n-ls_digits.py',
    'dcn': 'retinanet_r18n-dcn_digits.py',
    'lsconv-badinit': 'retinanet_r18n-ls-badinit_digits.py',
    'frozen-badinit': 'retinanet_r18n-ls-badinit-frozen_digits.py',
}
PROGRESS_MARKS = ('Iter(train)', 'bbox_mAP_copypaste', 'strides at', 'Traceback', 'Error:')


def mmdet_train_script() -> str:
    """mmdet's tools/train.py as installed with the package (what ``mim train mmdet`` runs)."""
    import mmdet
    return os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')


def train(config: str, work_dir: str, seed: int, extra: Sequence[str]) -> None:
    """One training run in its own process, its progress lines echoed."""
    command = [sys.executable, mmdet_train_script(), config, '--work-dir', work_dir,
               '--cfg-options', f'randomness.seed={seed}', *extra]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=REPO) as process:
        for line in process.stdout:
            if any(mark in line for mark in PROGRESS_MARKS):
                print('   ', line.rstrip()[line.find(' - mmengine - ') + 14:][:150], flush=True)
    if process.returncode:
        raise RuntimeError(f'training {config} (seed {seed}) failed with exit code '
                           f'{process.returncode}; see {work_dir}')


def read_run(work_dir: str) -> Optional[dict]:
    """bbox mAP, seconds per training iteration and final strides of a finished run."""
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
    strides = {layer: (axes['h'][-1][1], axes['w'][-1][1])
               for layer, axes in read_stride_trajectories(path).items()}
    return {'bbox_mAP': maps[-1]['coco/bbox_mAP'], 'bbox_mAP_50': maps[-1]['coco/bbox_mAP_50'],
            'seconds_per_iter': median_or_none(times),
            'final_strides': strides, 'scalars': path}


def median_or_none(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(runs: Dict[str, List[dict]]) -> List[dict]:
    rows = []
    for setting, results in runs.items():
        maps = [100 * r['bbox_mAP'] for r in results]
        layers = results[0]['final_strides'].keys()
        rows.append({
            'setting': setting, 'seeds': len(results),
            'bbox_mAP_mean': statistics.mean(maps),
            'bbox_mAP_std': statistics.stdev(maps) if len(maps) > 1 else 0.0,
            'bbox_mAP_runs': maps,
            'bbox_mAP_50_mean': statistics.mean(100 * r['bbox_mAP_50'] for r in results),
            'seconds_per_iter': median_or_none([r['seconds_per_iter'] for r in results]),
            'final_strides_mean': {layer: [statistics.mean(r['final_strides'][layer][axis]
                                                           for r in results) for axis in (0, 1)]
                                   for layer in layers},
        })
    return rows


def print_table(rows: List[dict]) -> str:
    lines = ['| setting | seeds | bbox mAP (mean ± std) | mAP@50 | s / iter | final strides '
             '(s_h, s_w), stages 2-4 |', '|---|---|---|---|---|---|']
    for row in rows:
        strides = ' '.join(f'({h:.2f}, {w:.2f})' for h, w in row['final_strides_mean'].values())
        per_iter = row['seconds_per_iter']
        lines.append(f"| {row['setting']} | {row['seeds']} | {row['bbox_mAP_mean']:.1f} ± "
                     f"{row['bbox_mAP_std']:.1f} | {row['bbox_mAP_50_mean']:.1f} | "
                     f"{'-' if per_iter is None else f'{per_iter:.3f}'} | {strides or '-'} |")
    table = '\n'.join(lines)
    print(table)
    return table


def plot(rows: List[dict], runs: Dict[str, List[dict]], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    learned = [s for s in runs if runs[s][0]['final_strides'] and not s.startswith('frozen')]
    fig, axes = plt.subplots(1, 1 + len(learned), figsize=(5 + 4.5 * len(learned), 4))
    axes = list(axes) if learned else [axes]
    names = [r['setting'] for r in rows]
    axes[0].bar(names, [r['bbox_mAP_mean'] for r in rows],
                yerr=[r['bbox_mAP_std'] for r in rows], capsize=4, color='tab:blue')
    for x, row in enumerate(rows):
        axes[0].plot([x] * len(row['bbox_mAP_runs']), row['bbox_mAP_runs'], 'k.')
    axes[0].set_ylabel('bbox mAP (%)')
    axes[0].set_title('digits detection, mean ± std over seeds')
    axes[0].tick_params(axis='x', rotation=30)
    for ax, setting in zip(axes[1:], learned):
        trajectories = read_stride_trajectories(runs[setting][0]['scalars'])
        for index, (layer, series) in enumerate(trajectories.items()):
            colour = f'C{index}'
            label = layer.replace('backbone.', '')
            ax.plot(*zip(*series['h']), color=colour, label=f'{label} s_h')
            ax.plot(*zip(*series['w']), color=colour, linestyle='--', label=f'{label} s_w')
        ax.set_xlabel('iteration')
        ax.set_ylabel('learned stride (pixels)')
        ax.set_title(f'{setting}: stride trajectories (first seed)')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--work-dir', default='work_dirs/detection_benchmark')
    parser.add_argument('--force', action='store_true', help='retrain runs that have results')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra key=value overrides for every run, e.g. train_cfg.max_iters=200')
    args = parser.parse_args(argv)
    work_dir = os.path.abspath(args.work_dir)
    runs: Dict[str, List[dict]] = {}
    for setting in args.settings:
        config = os.path.join(REPO, 'configs', 'digits', SETTINGS[setting])
        for seed in args.seeds:
            run_dir = os.path.join(work_dir, setting, f'seed{seed}')
            result = None if args.force else read_run(run_dir)
            if result is None:
                print(f'== {setting}, seed {seed}: training {os.path.relpath(config, REPO)}',
                      flush=True)
                start = time.time()
                train(config, run_dir, seed, args.cfg_options)
                result = read_run(run_dir)
                print(f'   done in {time.time() - start:.0f} s: bbox mAP '
                      f'{100 * result["bbox_mAP"]:.1f}', flush=True)
            runs.setdefault(setting, []).append(result)
    rows = summarise(runs)
    table = print_table(rows)
    png = os.path.join(work_dir, 'detection_benchmark.png')
    plot(rows, runs, png)
    with open(os.path.join(work_dir, 'detection_benchmark.json'), 'w') as f:
        json.dump({'rows': rows, 'runs': runs, 'table': table}, f, indent=1)
    print(f'wrote {png} and detection_benchmark.json in {work_dir}')


if __name__ == '__main__':
    main()

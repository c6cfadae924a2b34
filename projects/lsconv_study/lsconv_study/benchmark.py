"""The CPU detection study: trains the settings of one suite (a detector on a generated
dataset, narrow ResNet-18 (32-256 channels), no download; see :mod:`.suites`) with mmdet's
train tool, one process per run. Within a seed every setting starts from the same initial
weights (drawn once from the suite's baseline model and given to every run as ``load_from``;
the learned stride starts at its setting's value, layers only one setting has keep their usual
initialisation) and sees the same data order, so a per-seed difference between settings is
caused by the settings alone.

Every finished run is also evaluated under shifts (tools/shift_consistency.py, once);
``--costs`` first measures each setting's cost alone (tools/detector_costs.py).
Prints and writes per-setting mean ± std, consistency and s/iter, per-seed paired differences
(mAP and consistency) with 95% confidence intervals and the paired t-test's p-value, a cost
table, a plot, and the suite's section of the results page (``--readme`` rewrites it in
place). Runs whose results exist are reused (``--force`` retrains).
"""
import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

from .report import markdown, plot, rewrite_readme
from .runner import (CONSISTENCY_FILE, COSTS_FILE, checkpoint_of, evaluate_shifts,
                     measure_costs, read_run, run_is_paired, train, train_command,
                     write_initial_weights)
from .paired_stats import summarise
from .suites import DEFAULT_SUITE, SUITES

RESULTS_PAGE = 'projects/lsconv_study/results.md'


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
                        help=f'rewrite the suite\'s section of this page ({RESULTS_PAGE})')
    parser.add_argument('--figure',
                        help='also copy the plot here (e.g. the study page\'s figure)')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra key=value overrides for every run, e.g. '
                             'train_cfg.max_iters=200')
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

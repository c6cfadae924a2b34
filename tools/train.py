"""Trains a config with mmengine's Runner, like mmdet's tools/train.py, also distributed on CPU.

    python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]
    python -m torch.distributed.run --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch

Without a GPU, ``--launcher pytorch`` trains with gloo on CPU
(:func:`mmlstride.engine.setup_cpu_distributed`); with one, the Runner's own
launcher set-up is used. ``mim train mmdet CONFIG`` works too for one process.
"""
import argparse
import os
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmlstride.engine import setup_cpu_distributed


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='default: ./work_dirs/<config name>')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='config overrides, key=value (e.g. train_cfg.max_iters=100)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--resume', action='store_true', help='resume from the last checkpoint')
    args = parser.parse_args(argv)

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    cfg.resume = args.resume
    if args.launcher != 'none' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    Runner.from_cfg(cfg).train()


if __name__ == '__main__':
    main()

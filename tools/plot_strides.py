"""Draws the stride trajectories of a training run logged by StrideLoggerHook.

    python tools/plot_strides.py WORK_DIR [--out strides.png]

Reads the newest ``vis_data/scalars.json`` under WORK_DIR (mmengine's local
visualizer backend) and saves one panel per LSConv layer: s_h and s_w against
the iteration.
"""
import argparse
import math
import os
from typing import Optional, Sequence

from mmlstride.engine import find_scalars_json, read_stride_trajectories


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help="a run's work_dir (or a scalars.json)")
    parser.add_argument('--out', help='PNG path (default: WORK_DIR/strides.png)')
    args = parser.parse_args(argv)
    path = args.work_dir if args.work_dir.endswith('.json') else find_scalars_json(args.work_dir)
    if path is None:
        parser.error(f'work_dir={args.work_dir!r} has no vis_data/scalars.json; expected the '
                     'work_dir of a run with StrideLoggerHook')
    trajectories = read_stride_trajectories(path)
    if not trajectories:
        parser.error(f'{path} has no stride/ scalars; expected a run with StrideLoggerHook')
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))),
                                   'strides.png')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    columns = min(3, len(trajectories))
    rows = math.ceil(len(trajectories) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, (layer, series) in zip(axes.flat, trajectories.items()):
        ax.plot(*zip(*series['h']), label='s_h')
        ax.plot(*zip(*series['w']), label='s_w', linestyle='--')
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel('iteration')
        ax.set_ylabel('stride (pixels)')
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(trajectories):]:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f'wrote {out} ({len(trajectories)} layers, from {path})')


if __name__ == '__main__':
    main()

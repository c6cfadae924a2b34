"""A detector config's cost at the size users train at, against the same detector with mmdet's
plain ResNet: one training iteration and inference, time and peak memory.

    python tools/benchmark_real_size.py [CONFIG] [--size 800 1333] [--batch 2] [--repeats 3]

Both detectors are built from CONFIG (default: Faster R-CNN R-50-FPN with LSConv,
configs/lsconv/faster-rcnn_r50-ls_fpn_1x_coco.py), the plain one with its backbone's type set
to mmdet's ResNet (LSResNet's own options dropped), with random weights (the same for both:
the same seed) and a generated batch of images of ``--size`` with five boxes each (no
download). A training iteration is mmengine's ``train_step`` (data preprocessing, forward,
backward and the config's optimizer step); inference is ``test_step``. Each (detector, step)
runs in its own process, ``--iters`` timed after ``--warmup``; its peak memory is the highest
resident memory while the steps ran (Linux: the high-water mark, reset once the model and
batch are built) less the resident memory then. The processes are interleaved over
``--repeats``, and the table gives medians and the LSConv detector's ratios to the plain one.
"""
import argparse
import json
import os
import sys
from typing import Optional, Sequence

from mmlstride.benchmarks.real_size import markdown, measure, summary, worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'lsconv', 'faster-rcnn_r50-ls_fpn_1x_coco.py')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1333),
                        metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3, help='processes per detector and step')
    parser.add_argument('--iters', type=int, default=2, help='timed steps per process')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--worker', nargs=2, metavar=('VARIANT', 'STEP'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ('batch', 'repeats', 'iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)}: expected >= 1')
    if args.warmup < 0 or min(args.size) < 32:
        parser.error(f'--warmup {args.warmup} --size {args.size}: expected >= 0 and >= 32')
    if args.worker:
        result = worker(args.config, *args.worker, args.batch, args.size, args.iters,
                        args.warmup)
        print(json.dumps(result))
        return result
    results = measure(os.path.abspath(__file__), args.config, args.repeats, args.batch, args.size,
                      args.iters, args.warmup, REPO)
    table = summary(results)
    threads = sorted({r['threads'] for r in results})
    print(f'\n{os.path.relpath(args.config, REPO)} at {args.size[0]} x {args.size[1]}, batch '
          f'{args.batch}, random weights, {"/".join(map(str, threads))} threads; medians of '
          f'{args.repeats} processes x {args.iters} steps:\n')
    print('\n'.join(markdown(table)))
    report = {'config': args.config, 'size': list(args.size), 'batch': args.batch,
              'table': table, 'results': results}
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    sys.exit(main() and 0)

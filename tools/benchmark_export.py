"""ONNX Runtime latency of LSConv's export forms against nn.Conv2d.

Exports, with the default exporter (dynamic batch, height and width), a network of three
strided 3x3 convolutions (32->64->128->256 channels, padding 1, each followed by a stride-1
3x3 conv and ReLU) and each of its strided layers alone, as nn.Conv2d (the floor) and as
LSConv2d at three settings of stride and phase, each as exported:

- ``deploy``: after :func:`mmlstride.ops.switch_to_deploy`: a plain strided Conv at whole
  strides (after an AveragePool of 2 x 2 with a half-pixel phase), else as below;
- ``grid_sample``: not switched: one GridSample and a 1 x 1 Conv over the tap planes.

Every model is checked against PyTorch (largest relative difference), then all run in one
ONNX Runtime process, CPU provider, the machine's threads (not spinning between runs, so
that one session's threads do not slow the next), interleaved within each repeat;
prints a table of median latencies with ratios to nn.Conv2d, writes it as JSON and Markdown
and draws a bar chart.

    python tools/benchmark_export.py [--out work_dirs/benchmark_export] [--repeats 30]
        [--batch 4] [--size 128] [--no-layers]
"""
import argparse
import json
import os
import sys
import tempfile
from typing import List, Optional, Sequence

import torch

from mmlstride.benchmarks.onnx_latency import OPSET, figure, markdown, measure


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/benchmark_export',
                        help='folder for the JSON, Markdown table and chart')
    parser.add_argument('--repeats', type=int, default=30, help='timed runs of every model')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first')
    parser.add_argument('--no-layers', action='store_true',
                        help='time the network only, not each strided layer alone')
    parser.add_argument('--batch', type=int, default=4, help='images per run')
    parser.add_argument('--size', type=int, default=128, help='input height and width')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats {args.repeats}: expected >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: expected >= 0')
    if args.batch < 1 or args.size < 32:
        parser.error(f'--batch {args.batch} --size {args.size}: expected >= 1 and >= 32')
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as directory:
        rows = measure(args.repeats, args.warmup, not args.no_layers, args.batch, args.size,
                       directory)
    os.makedirs(args.out, exist_ok=True)
    lines = markdown(rows)
    header = (f'ONNX Runtime {ort.__version__}, CPU provider, {os.cpu_count()} CPUs, torch '
              f'{torch.__version__}, opset {OPSET}; batch {args.batch} at {args.size} px; median '
              f'of {args.repeats} interleaved runs; '
              'ratios to nn.Conv2d:')
    print('\n'.join([header, ''] + lines))
    with open(os.path.join(args.out, 'benchmark_export.md'), 'w') as f:
        f.write('\n'.join([header, ''] + lines) + '\n')
    with open(os.path.join(args.out, 'benchmark_export.json'), 'w') as f:
        json.dump({'onnxruntime': ort.__version__, 'torch': torch.__version__, 'opset': OPSET,
                   'repeats': args.repeats, 'rows': rows}, f, indent=1)
    figure(rows, os.path.join(args.out, 'benchmark_export.png'))
    print(f'wrote benchmark_export.json, .md and .png in {args.out}')
    return rows


if __name__ == '__main__':
    sys.exit(main() and 0)

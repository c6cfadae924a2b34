"""Fixed grids: the sampling op against its pooling-and-convolution form and the plain conv.

A layer whose stride is whole and frozen and whose phase is constant computes exactly a blend
(at a fractional phase) and a plain strided convolution; this times, side by side in one
process and interleaved within each repeat, per layer kind and shape:

- ``conv2d``: ``F.conv2d`` at the nominal stride, the floor;
- ``op``: the sampling op (``mmlstride.ops.ls_conv2d`` with the stride as a tensor);
- ``form``: the pooling-and-convolution form (``ls_conv2d_at_integer_stride``);
- ``layer``: a frozen ``LSConv2d``, whichever of the two it runs on this device.

Forward alone (no autograd) and forward+backward (input, weight and bias gradients), medians
of the repeats in ms (CUDA: CUDA events; CPU: the host clock) and ratios to ``conv2d``.

    python tools/benchmark_fixed_grid.py                  # CPU float32
    python tools/benchmark_fixed_grid.py --device cuda --dtype float32 bfloat16 --out f.json
"""
import argparse
import json
from typing import List, Optional

import torch

from mmlstride.benchmarks.fixed_grid import KINDS, METHODS, SHAPES, STEPS, measure, shape_of


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', nargs='+', default=['float32'],
                        choices=['float32', 'float64', 'bfloat16', 'float16'])
    parser.add_argument('--shapes', nargs='+', default=list(SHAPES),
                        help=f'names ({", ".join(SHAPES)}) or BxCxHxW')
    parser.add_argument('--kinds', nargs='+', default=list(KINDS), choices=list(KINDS))
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    try:
        shapes = {name: shape_of(name) for name in args.shapes}
    except ValueError as error:
        parser.error(str(error))
    rows: List[dict] = []
    print(f'device: {args.device}, torch {torch.__version__}')
    print('| dtype | layer | shape | pass | ' + ' | '.join(METHODS) + ' |')
    print('|' + '---|' * (4 + len(METHODS)))
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for kind in args.kinds:
            for shape_name, shape in shapes.items():
                result = measure(kind, shape, args.device, dtype, args.repeats,
                                 args.warmup)
                for step in STEPS:
                    floor = result['conv2d'][step]
                    cells = [f'{result[m][step]:.2f} ({result[m][step] / floor:.2f}x)'
                             if m in result else '-' for m in METHODS]
                    print(f'| {dtype_name} | {kind} | {shape_name} | {step} | ' +
                          ' | '.join(cells) + ' |', flush=True)
                    rows.append(dict(dtype=dtype_name, kind=kind, shape=shape_name, step=step,
                                     ms={m: result[m][step] for m in result}))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(device=args.device, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == '__main__':
    main()

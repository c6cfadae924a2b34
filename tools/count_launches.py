"""Operations per LSConv forward+backward: the ATen calls that touch memory and the sampling
calls, counted with torch.profiler; on CUDA also the kernels launched.

On the CPU this shows the host-side part that both backends share (tiling, GEMMs, copies,
bias, buffers): each memory-touching ATen call is a kernel launch and a pass over memory on
CUDA, each sampling call one or more kernels (see README, "Speed"). The CPU forward's float32
products through oneDNN (a copy and a bias add each, CPU only) are turned off meanwhile, so
that the CPU counts are those of the host code CUDA runs. Prints one table row per layer
shape and the ATen calls by name.

    python tools/count_launches.py                  # CPU, float32
    python tools/count_launches.py --device cuda
"""
import argparse
from typing import List, Optional

import torch

from mmlstride.benchmarks.launches import SHAPES, count


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = [count(*shape, args.device) for shape in SHAPES]
    print(f'LSConv2d(C, C, 3, stride=2, padding=1, bias) forward+backward on {args.device}')
    print(f'{"shape":10} {"ATen calls":>10} {"sampling":>9} {"kernels":>8}')
    for row in rows:
        kernels = '-' if row['kernels'] is None else row['kernels']
        print(f'{row["shape"]:10} {row["aten"]:>10} {row["sampling"]:>9} {kernels:>8}')
    for row in rows:
        listed = ', '.join(f'{name.removeprefix("aten::")} {n}'
                           for name, n in sorted(row['calls'].items()))
        print(f'{row["shape"]}: {listed}')


if __name__ == '__main__':
    main()

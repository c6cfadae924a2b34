"""Speed and peak memory of LSConv against a plain strided conv and deformable convs.

Side by side in one process, per shape: forward, backward and forward+backward
time (median of the repeats after warm-up, with min and max; the methods are
interleaved within each repeat so drift hits them alike) and the peak memory of
one forward+backward, for

- ``lsconv``: the compiled op (``mmlstride.ops.ls_conv2d``, im2col algorithm),
- ``conv2d``: ``F.conv2d`` at the nominal stride, the floor,
- ``pytorch``: the pure-PyTorch implementation (stride-1 conv2d + grid_sample),
- ``mmcv_dcn`` / ``torchvision_dcn``: a deformable conv at the nominal stride with
  the equivalent offsets (a (s_h - s0), b (s_w - s0)), built from the stride so the
  stride gets its gradient, where the package is installed.

Every method computes the same output size (the nominal one) with the same
fractional stride, so all do the same multiply-adds except ``pytorch``. Prints a
table of times and ratios to ``conv2d``, the floor estimates of each shape
(multiply-adds over the measured GEMM rate, bytes over the measured copy
bandwidth), writes JSON and saves a bar chart of the ratios.

    python tools/benchmark_op.py                      # CPU fp32, the issue's four shapes
    python tools/benchmark_op.py --device cuda --dtype float32 bfloat16
    python tools/benchmark_op.py --forward-loop --repeats 20  # CPU forward, calls in turn
"""
import argparse
import json
import math
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mmlstride.benchmarks.op import (CPU_SHAPES, FRACTIONAL_STRIDE, NOMINAL_STRIDE, SHAPES,
                                     Shape, available_methods, benchmark_shape, floor_ms,
                                     forward_loop, measure_rates, profile_lsconv)


def parse_shape(text: str) -> Shape:
    """A named shape of SHAPES, or 'BxCxS' (batch, channels, square input size) or 'BxCxHxW'."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        values = [int(v) for v in text.split('x')]
        assert len(values) in (3, 4)
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f'shape {text!r} expected one of {list(SHAPES)}, BxCxS '
                                         'or BxCxHxW, e.g. 2x64x100') from None
    return Shape(text, *values[:3], values[-1])


def print_profile(name: str, rows: List[Tuple[str, float]], limit: int = 8) -> None:
    total = sum(ms for _, ms in rows)
    print(f'  {name}: {total:.1f} ms self time per forward+backward; ' + ', '.join(
        f'{key} {ms:.1f} ({100 * ms / total:.0f}%)' for key, ms in rows[:limit]))


def print_table(records: List[dict], floors: Dict[str, Dict[str, float]]) -> None:
    header = (f"{'shape':<8} {'dtype':<8} {'method':<16} {'fwd ms':>8} {'bwd ms':>8} "
              f"{'fwd+bwd ms (min-max)':>22} {'x conv2d':>8} {'x dcn':>6} {'peak MiB':>9} "
              f"{'no_grad fwd ms':>14} {'x conv2d':>8}")
    print('x conv2d: median over repeats of the fwd+bwd time ratio within a repeat; '
          'x dcn: ratio of medians to mmcv_dcn (torchvision_dcn where mmcv has none); '
          'no_grad fwd: the forward alone under torch.no_grad() (inference), its ratio as above')
    print(header)
    print('-' * len(header))
    for record in records:
        key = (record['shape']['name'], record['dtype'])
        same_problem = [r for r in records if (r['shape']['name'], r['dtype']) == key]
        dcn = next((r for method in ('mmcv_dcn', 'torchvision_dcn') for r in same_problem
                    if r['method'] == method), None)
        total = record['total_ms']
        spread = f"{total['median']:.3g} ({total['min']:.3g}-{total['max']:.3g})"
        versus_dcn = (f"{total['median'] / dcn['total_ms']['median']:.2f}" if dcn else '-')
        print(f"{record['shape']['name']:<8} {record['dtype']:<8} {record['method']:<16} "
              f"{record['forward_ms']['median']:>8.3g} {record['backward_ms']['median']:>8.3g} "
              f"{spread:>22} {record['ratio_to_conv2d']:>8.2f} {versus_dcn:>6} "
              f"{record['peak_mib']:>9.1f} {record['inference_ms']['median']:>14.3g} "
              f"{record['inference_ratio_to_conv2d']:>8.2f}")
    print()
    print('floor of one forward+backward (ms): GEMM = 3 x multiply-adds / GEMM rate; bytes = '
          'minimal traffic (conv) or with the columns (im2col) / copy bandwidth')
    for key, floor in floors.items():
        print(f"  {key:<17} GEMM {floor['gemm']:7.1f}   conv bytes {floor['conv_bytes']:6.1f}   "
              f"im2col bytes {floor['im2col_bytes']:6.1f}")


def print_graph_table(records: List[dict]) -> None:
    """Forward+backward and no_grad forward replayed from CUDA graphs, and their ratios to
    conv2d's (ratios of medians)."""
    print('captured in CUDA graphs (no host launches): median ms, ratio to conv2d')
    for record in records:
        graph = record['cuda_graph_ms']
        conv = next(r['cuda_graph_ms'] for r in records if r['method'] == 'conv2d' and
                    (r['shape']['name'], r['dtype']) == (record['shape']['name'], record['dtype']))
        if graph is None or conv is None:
            print(f"  {record['shape']['name']:<10} {record['dtype']:<8} {record['method']:<16} -")
            continue
        total, inference = graph['total_ms']['median'], graph['inference_ms']['median']
        print(f"  {record['shape']['name']:<10} {record['dtype']:<8} {record['method']:<16} "
              f"fwd+bwd {total:8.3f} ({total / conv['total_ms']['median']:.2f}x)   no_grad fwd "
              f"{inference:8.3f} ({inference / conv['inference_ms']['median']:.2f}x)")
    print()


def plot(records: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = list(dict.fromkeys(f"{r['shape']['name']}\n{r['dtype']}" for r in records))
    methods = list(dict.fromkeys(r['method'] for r in records))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.8 * len(groups) + 3, 4.5))
    for k, method in enumerate(methods):
        ratios = [
            next((r['ratio_to_conv2d'] for r in records
                  if f"{r['shape']['name']}\n{r['dtype']}" == g and r['method'] == method), math.nan)
            for g in groups
        ]
        bars = ax.bar([g + (k - (len(methods) - 1) / 2) * width for g in range(len(groups))],
                      ratios, width, label=method)
        ax.bar_label(bars, fmt='%.2f', fontsize=7, rotation=90, padding=2)
    ax.axhline(2.0, color='red', linestyle='--', linewidth=1, label='target 2.0x')
    ax.set_yscale('log')
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel('forward+backward time / F.conv2d (log)')
    ax.set_title(f'LSConv vs a strided 3x3 conv, s = {FRACTIONAL_STRIDE}, '
                 f'{records[0]["device"]}, {torch.get_num_threads()} threads')
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shapes', nargs='+', type=parse_shape,
                        default=[SHAPES[name] for name in CPU_SHAPES],
                        help=f'some of {list(SHAPES)}, BxCxS or BxCxHxW (default: '
                             f'{", ".join(CPU_SHAPES)})')
    parser.add_argument('--methods', nargs='+', help='subset of the installed methods')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', nargs='+', default=['float32'],
                        choices=['float32', 'float64', 'float16', 'bfloat16'])
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--tf32', action='store_true',
                        help='let cuDNN convs and cuBLAS GEMMs use TF32 for float32 on CUDA '
                             '(default: neither, so every method computes in full float32)')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='also time each method captured in a CUDA graph (CUDA only)')
    parser.add_argument('--profile', action='store_true',
                        help='also print where the time of LSConv goes, by operator')
    parser.add_argument('--forward-loop', action='store_true',
                        help='instead: the no_grad forward of lsconv over conv2d, called in turn '
                        '--repeats times per shape, warm and with 256 MiB written before each '
                        'call (median per-call ratios; CPU)')
    parser.add_argument('--json', default='work_dirs/benchmark_op.json', help='output JSON path')
    parser.add_argument('--png', default='work_dirs/benchmark_op.png', help='output bar chart path')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.forward_loop:
        forward_loop(args.shapes, args.repeats)
        return
    if args.cuda_graph and device.type != 'cuda':
        parser.error(f'--cuda-graph needs --device cuda; got --device {args.device}')
    # PyTorch's defaults differ (TF32 on for cuDNN convs, off for GEMMs): one setting for all.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    methods = available_methods(device)
    if args.methods:
        unknown = set(args.methods) - set(methods)
        if unknown:
            parser.error(f'--methods {sorted(unknown)} not installed; expected some of {list(methods)}')
        methods = {name: methods[name] for name in methods if name in args.methods or name == 'conv2d'}
    print(f'torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, '
          f'{platform.processor() or platform.machine()}; stride {FRACTIONAL_STRIDE} against '
          f'nominal {NOMINAL_STRIDE}; median of {args.repeats} after {args.warmup} warm-up'
          + (f'; TF32 {"on" if args.tf32 else "off"}' if device.type == 'cuda' else ''))
    records, floors, rates, profiles = [], {}, {}, {}
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        rates[dtype_name] = measure_rates(dtype, device)
        for shape in args.shapes:
            records += benchmark_shape(shape, dtype, device, methods, args.warmup, args.repeats,
                                       args.cuda_graph)
            floors[f'{shape.name} {dtype_name}'] = floor_ms(shape, dtype.itemsize,
                                                            rates[dtype_name])
            if args.profile and any(r['method'] == 'lsconv' and r['dtype'] == dtype_name
                                    and r['shape']['name'] == shape.name for r in records):
                profiles[f'{shape.name} {dtype_name}'] = profile_lsconv(shape, dtype, device)
    print_table(records, floors)
    if args.cuda_graph:
        print_graph_table(records)
    if profiles:
        print('lsconv self time by operator (torch.profiler), ms per forward+backward:')
        for name, rows in profiles.items():
            print_profile(name, rows)
    for dtype_name, rate in rates.items():
        print(f"  {dtype_name}: GEMM {rate['gemm_multiply_adds_per_s'] / 1e9:.1f} G multiply-adds/s, "
              f"copy {rate['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    for path in (args.json, args.png):
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(args.json, 'w') as f:
        json.dump({'torch': torch.__version__, 'threads': torch.get_num_threads(),
                   'stride': FRACTIONAL_STRIDE, 'rates': rates, 'floors_ms': floors,
                   'records': records, 'lsconv_profile_ms': profiles}, f, indent=1)
    plot(records, args.png)
    print(f'wrote {args.json} and {args.png}')


if __name__ == '__main__':
    main()

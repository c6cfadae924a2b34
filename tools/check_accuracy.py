"""Worst relative error of the compiled LSConv op against its independent references.

Sweeps random cases (groups, dilation, padding, asymmetric fractional strides,
mmlstride.testing.random_case) on one device and prints the worst error of the
output and of each gradient:

1. against each reference in the same dtype: max|op - ref| / max|ref|;
2. per dtype (float16 and bfloat16 on CUDA), against the pure-PyTorch reference
   in float64 on the CPU given the same rounded inputs: ||op - ref|| / ||ref||;
3. on CUDA, against the CPU kernels in the same dtype: max|op - ref| / max|ref|.

    python tools/check_accuracy.py                 # CPU
    python tools/check_accuracy.py --device cuda   # all three tables on the GPU
"""
import argparse
from functools import partial
from typing import Callable, Dict

import torch

from mmlstride.ops import ls_conv2d_reference
from mmlstride.testing import (compiled_errors, compiled_op, errors, evaluate,
                               float64_reference_errors, ls_conv2d_by_deform_conv,
                               output_gradient, random_case)

QUANTITIES = ('output', 'grad_input', 'grad_weight', 'grad_bias', 'grad_stride')


def references() -> Dict[str, Callable]:
    """Name and function of every reference available here."""
    found = {'pure PyTorch (conv2d + grid_sample)': ls_conv2d_reference}
    try:
        from mmcv.ops import deform_conv2d
        found['mmcv.ops.deform_conv2d'] = partial(ls_conv2d_by_deform_conv, deform_conv2d)
    except ImportError:
        pass
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
        found['torchvision.ops.deform_conv2d'] = partial(ls_conv2d_by_deform_conv,
                                                         tv_deform_conv2d)
    except ImportError:
        pass
    return found


def print_row(name: str, dtype: torch.dtype, cases: int, error_of: Callable[[int], dict]) -> None:
    worst = dict.fromkeys(QUANTITIES, 0.0)
    for seed in range(cases):
        for key, error in error_of(seed).items():
            worst[key] = max(worst[key], error)
    print(f'{name:<38} {str(dtype)[6:]:<8} ' + ' '.join(f'{worst[q]:>11.2e}' for q in QUANTITIES))


def print_header(title: str) -> None:
    print(f'\n{title}')
    print(f'{"reference":<38} {"dtype":<8} ' + ' '.join(f'{q:>11}' for q in QUANTITIES))


def cpu_kernel_errors(seed: int, dtype: torch.dtype, device: torch.device) -> Dict[str, float]:
    case = random_case(seed, dtype)
    grad_output = output_gradient(case)
    on_device = evaluate(compiled_op, case.to(dtype, device, stride_dtype=dtype), grad_output)
    return errors(on_device, evaluate(compiled_op, case, grad_output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', type=int, default=200)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    # Every reference in full float32 (cuDNN would otherwise use TF32).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(f'{args.cases} random cases per row on {device}; worst error')
    print_header('1. against each reference, same dtype: max|op - ref| / max|ref|')
    for name, reference in references().items():
        for dtype in (torch.float64, torch.float32):
            print_row(name, dtype, args.cases, lambda seed: compiled_errors(
                random_case(seed, dtype, device=device), reference))
    print_header('2. against float64 on the same rounded inputs: ||op - ref|| / ||ref||')
    low = (torch.float32, ) if device.type == 'cpu' else (torch.float32, torch.float16,
                                                          torch.bfloat16)
    for dtype in low:
        print_row('pure PyTorch in float64, CPU', dtype, args.cases,
                  lambda seed: float64_reference_errors(random_case(seed), dtype, device))
    if device.type != 'cpu':
        print_header('3. against the CPU kernels, same dtype: max|op - ref| / max|ref|')
        for dtype in (torch.float64, torch.float32):
            print_row('mmlstride CPU kernels', dtype, args.cases,
                      lambda seed: cpu_kernel_errors(seed, dtype, device))


if __name__ == '__main__':
    main()

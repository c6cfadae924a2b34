"""Worst relative error of the compiled LSConv op against its independent references.

Sweeps random cases (groups, dilation, padding, asymmetric fractional strides,
mmlstride.testing.random_case) and prints, per reference and dtype, the worst
max|op - ref| / max|ref| of the output and of each gradient.
"""
import argparse
from functools import partial

import torch

from mmlstride.ops import ls_conv2d_reference
from mmlstride.testing import compiled_errors, ls_conv2d_by_deform_conv, random_case

QUANTITIES = ('output', 'grad_input', 'grad_weight', 'grad_bias', 'grad_stride')


def references():
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--cases', type=int, default=200)
    args = parser.parse_args()
    print(f'{args.cases} random cases per row; worst relative error')
    print(f'{"reference":<38} {"dtype":<8} ' + ' '.join(f'{q:>11}' for q in QUANTITIES))
    for name, reference in references().items():
        for dtype in (torch.float64, torch.float32):
            worst = dict.fromkeys(QUANTITIES, 0.0)
            for seed in range(args.cases):
                for key, error in compiled_errors(random_case(seed, dtype), reference).items():
                    worst[key] = max(worst[key], error)
            print(f'{name:<38} {str(dtype)[6:]:<8} ' +
                  ' '.join(f'{worst[q]:>11.2e}' for q in QUANTITIES))


if __name__ == '__main__':
    main()

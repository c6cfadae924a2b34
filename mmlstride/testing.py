"""Independent references for LSConv (DESIGN.md section 3) and random cases, for tests and tools."""
import math
import random
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ls_conv2d_by_deform_conv(deform_conv2d: Callable, input: Tensor, weight: Tensor,
                             stride: Tensor, bias: Optional[Tensor], padding: Tuple[int, int],
                             dilation: Tuple[int, int], groups: int,
                             output_size: Tuple[int, int]) -> Tensor:
    """LSConv computed by a deformable convolution with the equivalent offsets.

    A stride-1 DCN with padding P samples output (a, b), tap (i, j) at
    (a - P_h + i d_h, b - P_w + j d_w); the offset (a (s_h - 1) + P_h - p_h,
    b (s_w - 1) + P_w - p_w) moves it to LSConv's sample point. P is chosen so
    the DCN's output covers ``output_size``; the surplus is cropped. The offsets
    are built from ``stride`` with differentiable ops, so autograd gives the
    stride gradient as the sum over taps of a * grad_offset_h (b * grad_offset_w).

    ``deform_conv2d`` is mmcv.ops.deform_conv2d or torchvision.ops.deform_conv2d
    (told apart by their signatures).
    """
    kh, kw = weight.shape[2:]
    big_pad = []
    for k in range(2):
        extent = dilation[k] * (weight.shape[2 + k] - 1)
        need = max(0, math.ceil((output_size[k] - input.shape[2 + k] + extent) / 2))
        big_pad.append(max(padding[k], need))
    offsets = []
    for k in range(2):
        index = torch.arange(output_size[k], dtype=input.dtype, device=input.device)
        offsets.append(index * (stride[k] - 1) + (big_pad[k] - padding[k]))
    off_h, off_w = torch.meshgrid(offsets[0], offsets[1], indexing='ij')
    # Channel 2t is the h offset of tap t = i * kw + j, channel 2t + 1 its w offset.
    offset = torch.stack((off_h, off_w)).repeat(kh * kw, 1, 1)
    pad_h = input.shape[2] + 2 * big_pad[0] - dilation[0] * (kh - 1)
    pad_w = input.shape[3] + 2 * big_pad[1] - dilation[1] * (kw - 1)
    offset = F.pad(offset, (0, pad_w - output_size[1], 0, pad_h - output_size[0]))
    offset = offset.unsqueeze(0).expand(input.shape[0], -1, -1, -1).contiguous()
    if deform_conv2d.__module__.startswith('torchvision'):
        out = deform_conv2d(input, offset, weight, None, stride=1, padding=tuple(big_pad),
                            dilation=dilation)
    else:
        out = deform_conv2d(input, offset, weight, 1, tuple(big_pad), dilation, groups, 1)
    out = out[:, :, :output_size[0], :output_size[1]]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are empty or zero)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


# Strides whose multiples a * s (a < 40) are never integers, so no sample point sits
# on the kinks of the bilinear interpolant, where the two references' one-sided
# stride derivatives may legitimately differ. Below 1, between 1 and 2, above the
# kernel size.
FRACTIONAL_STRIDES = (0.6180339887, 0.7071067812, 1.3247179572, 1.7320508076, 2.2360679775,
                      2.7182818285, 3.1415926536, 4.4142135624)


@dataclass
class Case:
    """Arguments of one ls_conv2d call."""
    input: torch.Tensor
    weight: torch.Tensor
    stride: torch.Tensor
    bias: Optional[torch.Tensor]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    output_size: Tuple[int, int]

    def args(self):
        return (self.input, self.weight, self.stride, self.bias, self.padding, self.dilation,
                self.groups, self.output_size)

    def leaves(self):
        return [t for t in (self.input, self.weight, self.bias, self.stride) if t is not None]


def random_case(seed: int, dtype=torch.float64, batch: Optional[int] = None) -> Case:
    """A random valid case: groups, dilation, padding, asymmetric fractional strides."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    groups = rng.choice((1, 1, 2, 3))
    channels = groups * rng.randint(1, 3)
    out_channels = groups * rng.randint(1, 3)
    kernel = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    size = [max(rng.randint(3, 12), dilation[k] * (kernel[k] - 1) + 1) for k in range(2)]
    stride = [rng.choice(FRACTIONAL_STRIDES) for _ in range(2)]
    output_size = tuple(rng.randint(1, max(1, int(size[k] / stride[k])) + 2) for k in range(2))
    batch = rng.choice((1, 2, 3)) if batch is None else batch

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    return Case(
        input=randn(batch, channels, *size),
        weight=randn(out_channels, channels // groups, *kernel),
        stride=torch.tensor(stride, dtype=dtype, requires_grad=True),
        bias=randn(out_channels) if rng.random() < 0.7 else None,
        padding=padding,
        dilation=dilation,
        groups=groups,
        output_size=output_size)


def compiled_errors(case: Case, reference: Callable[..., Tensor]) -> Dict[str, float]:
    """Relative errors of the compiled op against ``reference(*case.args())``.

    Keys: 'output', and 'grad_input', 'grad_weight', 'grad_bias', 'grad_stride'
    for one fixed random output gradient ('grad_bias' only when the case has a bias).
    """
    out = torch.ops.mmlstride.ls_conv2d(case.input, case.weight, case.bias, case.stride,
                                        case.padding, case.dilation, case.groups,
                                        case.output_size)
    expected = reference(*case.args())
    if out.shape != expected.shape:
        raise AssertionError(f'output shape {tuple(out.shape)} != {tuple(expected.shape)}')
    errors = {'output': relative_error(out, expected)}
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0),
                           dtype=out.dtype).to(out.device)
    names = [name for name, t in (('input', case.input), ('weight', case.weight),
                                  ('bias', case.bias), ('stride', case.stride)) if t is not None]
    grads = torch.autograd.grad(out, case.leaves(), grad_out)
    expected_grads = torch.autograd.grad(expected, case.leaves(), grad_out)
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        errors['grad_' + name] = relative_error(grad, expected_grad)
    return errors

"""Independent references for LSConv (DESIGN.md section 3), shared by the tests and tools."""
import math
from typing import Callable, Optional, Tuple

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

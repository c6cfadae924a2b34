"""Pure-PyTorch learnable-stride convolution (the resample form of the operation).

Used when the compiled extension is unavailable, and as an independent test
oracle. Bilinear weights depend only on the fractional part of a sample
position and the kernel taps are integer shifts, so the convolution sampled at
``a * s + t - p + i * d`` equals the bilinear sample, at ``a * s + t - p``, of the
stride-1 convolution of the zero-extended input. This is exact.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ls_conv2d_reference(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                        padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                        output_size: Tuple[int, int], phase: Optional[Tensor] = None) -> Tensor:
    """LSConv by F.conv2d (stride 1) followed by F.grid_sample; differentiable in every tensor.

    Arguments are those of :func:`mmlstride.ops.ls_conv2d`, already checked and
    normalised (pairs of ints, ``stride`` a tensor of shape (2,)).
    """
    extent = [dilation[k] * (weight.shape[2 + k] - 1) for k in range(2)]
    # z[u] is the full stride-1 convolution evaluated at position u - extent - 1;
    # the extra zero border makes grid_sample's zero padding equal the zero extension.
    z = F.conv2d(input, weight, None, 1, (extent[0] + 1, extent[1] + 1), dilation, groups)
    axes = []
    for k in range(2):
        index = torch.arange(output_size[k], dtype=stride.dtype, device=stride.device)
        position = index * stride[k] - padding[k] + extent[k] + 1
        if phase is not None:
            position = position + phase[k].to(stride.dtype)
        axes.append(2 * position / (z.shape[2 + k] - 1) - 1)
    grid_y, grid_x = torch.meshgrid(axes[0], axes[1], indexing='ij')
    grid = torch.stack((grid_x, grid_y), dim=-1).expand(input.shape[0], -1, -1, -1)
    out = F.grid_sample(z, grid.to(z.dtype), mode='bilinear', padding_mode='zeros',
                        align_corners=True)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out

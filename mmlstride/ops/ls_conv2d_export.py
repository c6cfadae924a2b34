"""LSConv in standard operators, for export: one bilinear GridSample and one strided convolution.

The sample of every (output pixel, kernel tap) is taken once, by ``F.grid_sample`` (ONNX
GridSample, bilinear, zero padding), into a map whose rows are (a, i) pairs and columns
(b, j) pairs; a convolution with kernel (kh, kw) and stride (kh, kw) over that map then does
exactly the multiply-adds of the strided convolution. The input gets a border of one zero
pixel first, which makes GridSample's zero padding MMCV's boundary rule (a sample at or
beyond -1 or the size is 0) for any input size, 1 included.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ls_conv2d_by_sampling(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                          padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                          output_size: Tuple[int, int], phase: Optional[Tensor] = None) -> Tensor:
    """LSConv by one F.grid_sample of every tap's samples and one convolution of stride
    (kh, kw). Arguments are those of :func:`mmlstride.ops.ls_conv2d`, checked and normalised.
    """
    kernel = weight.shape[2:]
    bordered = F.pad(input, (1, 1, 1, 1))
    axes = []
    for k in range(2):
        out = torch.arange(output_size[k], dtype=stride.dtype, device=input.device)
        tap = torch.arange(kernel[k], dtype=stride.dtype, device=input.device) * dilation[k]
        # position of (output index, tap) in the bordered input, output-major
        position = out[:, None] * stride[k] + (tap[None, :] - padding[k] + 1)
        if phase is not None:
            position = position + phase[k].to(stride.dtype)
        position = position.reshape(-1)
        size = input.shape[2 + k] + 2
        axes.append(2 * position / (size - 1) - 1)  # align_corners=True coordinates
    grid_y, grid_x = torch.meshgrid(axes[0], axes[1], indexing='ij')
    grid = torch.stack((grid_x, grid_y), dim=-1).to(input.dtype)
    grid = grid.unsqueeze(0).expand(input.shape[0], -1, -1, -1)
    samples = F.grid_sample(bordered, grid, mode='bilinear', padding_mode='zeros',
                            align_corners=True)
    return F.conv2d(samples, weight, bias, stride=tuple(kernel), groups=groups)

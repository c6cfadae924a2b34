"""LSConv in standard operators, for export, in two exact forms.

- :func:`ls_conv2d_at_integer_stride`: whole strides and a constant phase (a layer switched to
  deploy, :func:`mmlstride.ops.switch_to_deploy`): a plain strided convolution, after a 2 x 2
  blend when the phase has a fraction.
- :func:`ls_conv2d_by_sampling`: any stride: the sample of every (kernel tap, output pixel)
  taken once, by ``F.grid_sample`` (ONNX GridSample, bilinear, zero padding), into a map of
  kh * kw tap planes per input channel; read as C * kh * kw channels, a 1 x 1 convolution
  then does exactly the multiply-adds of the strided convolution, as one matrix product with
  no unfolding. The input gets a border of one zero pixel first, which makes GridSample's
  zero padding MMCV's boundary rule (a sample at or beyond -1 or the size is 0) for any input
  size, 1 included.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def ls_conv2d_by_sampling(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                          padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                          output_size: Tuple[int, int], phase: Optional[Tensor] = None) -> Tensor:
    """LSConv by one F.grid_sample of every tap's samples and one 1 x 1 convolution.
    Arguments are those of :func:`mmlstride.ops.ls_conv2d`, checked and normalised.
    """
    kh, kw = weight.shape[2:]
    bordered = F.pad(input, (1, 1, 1, 1))
    axes = []
    for k, taps in enumerate((kh, kw)):
        out = torch.arange(output_size[k], dtype=stride.dtype, device=input.device)
        tap = torch.arange(taps, dtype=stride.dtype, device=input.device) * dilation[k]
        # position of (tap, output index) in the bordered input
        position = tap[:, None] + (out[None, :] * stride[k] - padding[k] + 1)
        if phase is not None:
            position = position + phase[k].to(stride.dtype)
        size = input.shape[2 + k] + 2
        # align_corners=False coordinates: ONNX Runtime's fast GridSample path takes only these
        axes.append(((2 * position + 1) / size - 1).to(input.dtype))
    # grid[i, j, a, b] samples tap (i, j) of output pixel (a, b); rows (i, j, a), columns b
    rows, columns = output_size
    grid_y = axes[0][:, None, :, None].expand(kh, kw, rows, columns)
    grid_x = axes[1][None, :, None, :].expand(kh, kw, rows, columns)
    grid = torch.stack((grid_x, grid_y), dim=-1).reshape(1, kh * kw * rows, columns, 2)
    grid = grid.expand(input.shape[0], -1, -1, -1)
    samples = F.grid_sample(bordered, grid, mode='bilinear', padding_mode='zeros',
                            align_corners=False)
    # channel c's tap planes are channels c * kh * kw + (i * kw + j), weight's own order
    samples = samples.reshape(input.shape[0], -1, rows, columns)
    return F.conv2d(samples, weight.reshape(weight.shape[0], -1, 1, 1), bias, groups=groups)


def ls_conv2d_at_integer_stride(input: Tensor, weight: Tensor, stride: Tuple[int, int],
                                bias: Optional[Tensor], padding: Tuple[int, int],
                                dilation: Tuple[int, int], groups: int,
                                output_size: Optional[Tuple[int, int]],
                                phase: Tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """LSConv at whole strides and a constant phase, as a plain convolution of that stride.

    The phase's whole part moves the zero padding; its fraction (f_h, f_w) becomes one blend
    of each pixel with its next neighbours, weights (1 - f, f) per axis (an AveragePool of
    2 x 2 at half a pixel on both axes, else a depthwise 2 x 2 convolution), before the
    convolution samples. Exact: bilinear interpolation at position m + f is that blend.
    ``output_size`` None is the convolution's own size, floor((H + 2p - d(k - 1) - 1) / s) + 1:
    the padding is then fixed (no phase: nn.Conv2d's), else it follows the input size.
    """
    kernel = weight.shape[2:]
    whole = [math.floor(t) for t in phase]
    fraction = [t - w for t, w in zip(phase, whole)]
    blend = [int(f > 0) for f in fraction]
    # The padded input's row 0 is at position whole - padding; it must hold the
    # (out - 1) * s + d * (k - 1) + 1 positions the convolution reads, one more to blend.
    begin = [padding[k] - whole[k] for k in range(2)]
    if output_size is None:  # the conv's own size: as many rows after as before, and the blend's
        end = [padding[k] + whole[k] + blend[k] for k in range(2)]
    else:
        end = [(output_size[k] - 1) * stride[k] + dilation[k] * (kernel[k] - 1) + 1 + blend[k] -
               input.shape[2 + k] - begin[k] for k in range(2)]
    x = input
    conv_padding = (0, 0)
    if output_size is None and not any(blend) and begin == end:
        conv_padding = tuple(begin)  # nn.Conv2d's padding
    elif output_size is None and fraction == [0.5, 0.5] and min(begin + end) >= 1:
        # The pool pads 1 on every side (which keeps the border pixels' halves), the conv the
        # rest, all zeros, after it as a Pad when uneven: ONNX Runtime fuses that Pad into the
        # Conv (not into the pool).
        x = F.avg_pool2d(x, 2, stride=1, padding=1)
        rest = [(begin[k] - 1, end[k] - 1) for k in range(2)]
        if rest[0][0] == rest[0][1] and rest[1][0] == rest[1][1]:
            conv_padding = (rest[0][0], rest[1][0])
        else:
            x = F.pad(x, (rest[1][0], rest[1][1], rest[0][0], rest[0][1]))
        return F.conv2d(x, weight, bias, stride=tuple(stride), padding=conv_padding,
                        dilation=dilation, groups=groups)
    elif output_size is None and min(begin + end) >= 0:
        x = F.pad(x, (begin[1], end[1], begin[0], end[0]))
    else:
        # Positive begins, then the ends (either sign), then negative begins: each step leaves
        # at least one row, where one pad of all four could crop more than the input holds.
        if max(begin) > 0:
            x = F.pad(x, (max(begin[1], 0), 0, max(begin[0], 0), 0))
        x = F.pad(x, (0, end[1], 0, end[0]))
        if min(begin) < 0:
            x = F.pad(x, (min(begin[1], 0), 0, min(begin[0], 0), 0))
    if fraction == [0.5, 0.5]:
        x = F.avg_pool2d(x, 2, stride=1)
    elif any(fraction):
        taps = [torch.tensor([1 - f, f] if f else [1.0], dtype=x.dtype, device=x.device)
                for f in fraction]
        channels = int(weight.shape[1]) * groups  # a constant for the tracer
        kernel2 = (taps[0][:, None] * taps[1][None, :]).repeat(channels, 1, 1, 1)
        x = F.conv2d(x, kernel2, groups=channels)
    return F.conv2d(x, weight, bias, stride=tuple(stride), padding=conv_padding,
                    dilation=dilation, groups=groups)

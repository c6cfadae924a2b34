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


def _pad_or_crop(x: Tensor, rows: Tuple[int, int], columns: Tuple[int, int]) -> Tensor:
    """``x`` with (before, after) zero rows and columns added where positive, cropped where
    negative: positive begins, then the ends (either sign; symbolic under export with dynamic
    shapes), then negative begins, so that no step crops more than the tensor holds."""
    ends_known = _known(rows[1]) and _known(columns[1])
    if ends_known and min(rows + columns) >= 0:
        return F.pad(x, (columns[0], columns[1], rows[0], rows[1])) if any(rows + columns) else x
    if max(rows[0], columns[0]) > 0:
        x = F.pad(x, (max(columns[0], 0), 0, max(rows[0], 0), 0))
    if not ends_known or rows[1] or columns[1]:
        x = F.pad(x, (0, columns[1], 0, rows[1]))
    if min(rows[0], columns[0]) < 0:
        x = F.pad(x, (min(columns[0], 0), 0, min(rows[0], 0), 0))
    return x


def _known(value) -> bool:
    """Whether ``value`` is a plain int (not a size symbolic under export)."""
    return isinstance(value, int)


def _split(begin: int, end, step: int, most: Optional[int] = None) -> Tuple[int, int, int]:
    """(padding, before, after): for an operator that reads with ``step`` and pads ``padding``
    zeros on both sides, where the rows needed before and after the input are ``begin`` and
    ``end``, the rows still to pad (negative: to crop) before and after it. Fewer than
    ``step`` rows over at the end are left: the operator's floor drops them. ``most`` bounds the
    padding (a pool's, half its window); a symbolic ``end`` is all padded by hand."""
    if not _known(end):
        return 0, begin, end
    padding = max(0, min(begin, end + step - 1, begin if most is None else most))
    after = end - padding
    return padding, begin - padding, 0 if -step < after < 0 else after


def ls_conv2d_at_integer_stride(input: Tensor, weight: Tensor, stride: Tuple[int, int],
                                bias: Optional[Tensor], padding: Tuple[int, int],
                                dilation: Tuple[int, int], groups: int,
                                output_size: Optional[Tuple[int, int]],
                                phase: Tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """LSConv at whole strides and a constant phase, as a plain convolution.

    Per axis, output a's tap i samples at a * s + i * d + t - p. The phase's whole part w moves
    the zero padding; its fraction f becomes one blend of each pixel with the next, weights
    (1 - f, f) (an average pool of 2 at f = 1/2 on every blended axis, else a depthwise
    convolution): bilinear interpolation at m + f is that blend, so the form is exact. Where
    every tap of the kernel reads rows of one residue modulo s (s divides d, or one tap), the
    blend is computed only there, at stride s, and the convolution runs at stride 1 on it
    (a 1 x 1 shortcut at a half-pixel phase: a 2 x 2 average pool of stride 2, then the 1 x 1
    convolution); else the blend is taken at every pixel and the convolution is strided.

    ``output_size`` None is the convolution's own size, floor((H + 2p - d(k - 1) - 1) / s) + 1,
    with paddings that do not depend on the input size (for export with dynamic shapes);
    otherwise exactly the rows the output reads are padded or cropped.
    """
    kernel = [int(k) for k in weight.shape[2:]]
    whole = [math.floor(t) for t in phase]
    fraction = [t - w for t, w in zip(phase, whole)]
    blend = [int(f > 0) for f in fraction]
    # Zero rows needed before row 0 of the input (negative: rows cropped), and after its end;
    # the own size pads p + w + blend after, and the convolution's floor drops what is over.
    begin = [padding[k] - whole[k] for k in range(2)]
    if output_size is None:
        end = [padding[k] + whole[k] + blend[k] for k in range(2)]
    else:
        end = [(output_size[k] - 1) * stride[k] + dilation[k] * (kernel[k] - 1) + 1 + blend[k] -
               input.shape[2 + k] - begin[k] for k in range(2)]
    def slack(step: int) -> int:
        """An operator's step, through which it tolerates rows over at the end: any below it
        with exact ends; none with the own size's, which already hold that slack."""
        return 1 if output_size is None else step

    if not any(blend):
        splits = [_split(begin[k], end[k], slack(stride[k])) for k in range(2)]
        x = _pad_or_crop(input, *[split[1:] for split in splits])
        return F.conv2d(x, weight, bias, stride=tuple(stride),
                        padding=tuple(split[0] for split in splits),
                        dilation=tuple(dilation), groups=groups)
    # The blend's stride per axis: s where every tap reads one residue modulo s.
    step = [stride[k] if kernel[k] == 1 or dilation[k] % stride[k] == 0 else 1
            for k in range(2)]
    pool_padding, before_pool, after_pool, conv_padding = [], [], [], []
    for k in range(2):
        if step[k] == 1 and (not blend[k] or min(begin[k], end[k]) >= 1):
            # The blend pads blend[k] on both sides; the rows past it are zeros, which the
            # convolution pads (or a pad after the blend).
            pool_padding.append(blend[k])
            before_pool.append((0, 0))
            padding_k, *rest = _split(begin[k] - blend[k], end[k] - blend[k],
                                      slack(stride[k]))
            conv_padding.append(padding_k)
            after_pool.append(tuple(rest))
        else:
            padding_k, *rest = _split(begin[k], end[k], slack(step[k]), most=blend[k])
            pool_padding.append(padding_k)
            before_pool.append(tuple(rest))
            conv_padding.append(0)
            after_pool.append((0, 0))
    x = _pad_or_crop(input, *before_pool)
    size = tuple(1 + b for b in blend)
    if all(f in (0.0, 0.5) for f in fraction):
        x = F.avg_pool2d(x, size, stride=tuple(step), padding=tuple(pool_padding))
    else:
        taps = [torch.tensor([1 - f, f] if f else [1.0], dtype=x.dtype, device=x.device)
                for f in fraction]
        channels = int(weight.shape[1]) * groups  # a constant for the tracer
        kernel2 = (taps[0][:, None] * taps[1][None, :]).repeat(channels, 1, 1, 1)
        x = F.conv2d(x, kernel2, stride=tuple(step), padding=tuple(pool_padding),
                     groups=channels)
    x = _pad_or_crop(x, *after_pool)
    conv_stride = tuple(stride[k] // step[k] for k in range(2))
    conv_dilation = tuple(dilation[k] // step[k] if kernel[k] > 1 else 1 for k in range(2))
    return F.conv2d(x, weight, bias, stride=conv_stride, padding=tuple(conv_padding),
                    dilation=conv_dilation, groups=groups)

"""The functional learnable-stride convolution ``ls_conv2d`` and its torch.library registrations.

Output pixel (a, b) of channel o is

    y[n, o, a, b] = bias[o] + sum_{c, i, j} weight[o, c, i, j]
                              * X[n, c](a * s_h + t_h - p_h + i * d_h, b * s_w + t_w - p_w + j * d_w)

where X is bilinear interpolation with MMCV's deform-conv boundary rule, the stride
s = (s_h, s_w) is a differentiable tensor and so is the optional phase t = (t_h, t_w), a
translation of the sampling grid (0 when absent).
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .arguments import (check_arguments, check_fake_shapes, check_phase_values,
                        default_output_size, numbers_or_none, pair, stride_values, whole_pair)
from .extension import EXTENSION_ERROR, has_kernel
from .ls_conv2d_export import ls_conv2d_at_integer_stride, ls_conv2d_by_sampling
from .ls_conv2d_reference import ls_conv2d_reference
from ..torch_compat import (autocast_dtype, autocast_enabled, is_compiling, is_exporting,
                            onnx_export_opset, register_autograd, register_fake)

IntPair = Union[int, Sequence[int]]

# ONNX has GridSample with the 'bilinear' mode TensorRT reads in opsets 16 to 19.
ONNX_OPSETS = range(16, 20)


def _check_onnx_opset() -> None:
    """Raises a ValueError when the running TorchScript-based ONNX export targets an opset
    without the bilinear GridSample LSConv exports to."""
    opset = onnx_export_opset()
    if not is_exporting() and opset not in ONNX_OPSETS:
        raise ValueError(f'opset_version={opset} expected 16 to 19: LSConv exports to ONNX '
                         "GridSample (opset 16) with mode 'bilinear' (opsets 16-19)")


def _export_in_standard_operators(input, weight, stride, bias, padding, dilation, groups,
                                  output_size, phase, given_stride, given_phase,
                                  own_size: bool) -> Tensor:
    """LSConv in standard ONNX operators (:mod:`mmlstride.ops.ls_conv2d_export`): a plain
    convolution at whole strides and a constant phase given as numbers, else GridSample;
    ``own_size``: ``output_size`` is the default one, computed from the stride."""
    _check_onnx_opset()
    whole = whole_pair(given_stride)
    constant_phase = (0.0, 0.0) if given_phase is None else (
        None if isinstance(given_phase, Tensor) else numbers_or_none(given_phase))
    if whole is not None and constant_phase is not None:
        return ls_conv2d_at_integer_stride(input, weight, whole, bias, padding, dilation, groups,
                                           None if own_size else output_size, constant_phase)
    return ls_conv2d_by_sampling(input, weight, stride, bias, padding, dilation, groups,
                                 output_size, phase)


def _form_is_faster(device: torch.device, phase: Tuple[float, float]) -> bool:
    """Whether the pooling-and-convolution form beats the sampling op on a whole-stride grid
    with this phase: on CUDA always (a cuDNN convolution, where the op passes columns through
    global memory); on CPU only without a fractional phase (then the form is the plain
    convolution), since the op blends inside its cache-sized column tiles where the form
    makes a pass over the whole input (``tools/benchmark_fixed_grid.py``)."""
    return device.type != 'cpu' or all(t == math.floor(t) for t in phase)


def _on_fixed_grid(input: Tensor, weight: Tensor, stride: Tuple[int, int],
                   bias: Optional[Tensor], padding: Tuple[int, int], dilation: Tuple[int, int],
                   groups: int, output_size: Optional[Tuple[int, int]],
                   phase: Tuple[float, float]) -> Tensor:
    """LSConv on a grid given as numbers with whole strides, by PyTorch's pooling and
    convolution (:func:`ls_conv2d_at_integer_stride`), in the dtype the op would run in:
    under autocast, float32 on CPU and the autocast dtype on CUDA."""
    autocast = autocast_enabled(input.device)
    if autocast and input.device.type == 'cpu':
        with torch.autocast('cpu', enabled=False):
            tensors = [t if t is None or t.dtype == torch.float64 else t.float()
                       for t in (input, weight, bias)]
            return ls_conv2d_at_integer_stride(tensors[0], tensors[1], stride, tensors[2],
                                               padding, dilation, groups, output_size, phase)
    if autocast and input.dtype != torch.float64:  # the convolutions cast the rest
        input = input.to(autocast_dtype(input.device))
    return ls_conv2d_at_integer_stride(input, weight, stride, bias, padding, dilation, groups,
                                       output_size, phase)


def _as_tensor(value, input: Tensor) -> Tensor:
    """A stride or phase given as numbers, as a tensor on input's device (float64 for float64
    input, else float32)."""
    if isinstance(value, Tensor) or not isinstance(input, Tensor):
        return value
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    return torch.as_tensor(value, dtype=dtype, device=input.device)


def ls_conv2d(input: Tensor,
              weight: Tensor,
              stride: Union[Tensor, Sequence[float]],
              bias: Optional[Tensor] = None,
              padding: IntPair = 0,
              dilation: IntPair = 1,
              groups: int = 1,
              output_size: Optional[IntPair] = None,
              phase: Optional[Union[Tensor, Sequence[float]]] = None) -> Tensor:
    """Learnable-stride 2-D convolution, differentiable in input, weight, bias, stride and phase.

    Args:
        input: (N, C, H, W): float32 or float64; float16 and bfloat16 too on CUDA.
            Under autocast the op runs in the autocast dtype on CUDA and in float32
            on CPU (see the op page, docs/op.md).
        weight: (O, C / groups, kernel_h, kernel_w), same dtype and device as input.
        stride: (2,) tensor (s_h, s_w) of real strides > 0, any floating dtype (its
            gradient has that dtype), or a pair of numbers (no gradient: whole ones, with a
            phase given as numbers or None, are computed by pooling and a plain convolution
            where that is faster, see docs/op.md).
        bias: (O,) or None.
        padding, dilation: int or (h, w) pair, as in F.conv2d.
        groups: number of channel groups, as in F.conv2d.
        output_size: (H_out, W_out). None means floor((H + 2p - d(k - 1) - 1) / s) + 1
            per axis from the current stride values (which reads them: pass it
            explicitly under torch.compile, as LSConv2d does).
        phase: None (no translation, the default), or a (2,) tensor (t_h, t_w) of finite
            reals, any floating dtype, or a pair of numbers: output pixel (a, b) samples at
            (a * s_h + t_h, b * s_w + t_w) before padding and taps. The output size does
            not depend on it.

    Returns:
        (N, O, H_out, W_out) tensor.
    """
    given_stride, given_phase = stride, phase
    stride = _as_tensor(stride, input)
    phase = None if phase is None else _as_tensor(phase, input)
    padding = pair(padding, 'padding', integer=True, minimum=0)
    dilation = pair(dilation, 'dilation', integer=True, minimum=1)
    check_arguments(input, weight, stride, bias, padding, dilation, groups, phase)
    stride_checked = own_size = output_size is None
    if output_size is None:
        # From the numbers when given as numbers: known under torch.export, unlike a tensor's.
        numbers = None if isinstance(given_stride, Tensor) else numbers_or_none(given_stride)
        values = numbers if numbers and min(numbers) > 0 else stride_values(stride)
        output_size = default_output_size(input.shape[2:], weight.shape[2:], values, padding,
                                          dilation)
    else:
        output_size = pair(output_size, 'output_size', integer=True, minimum=1)
    if torch.onnx.is_in_onnx_export():  # standard operators only
        return _export_in_standard_operators(input, weight, stride, bias, padding, dilation,
                                             groups, output_size, phase, given_stride,
                                             given_phase, own_size)
    whole = whole_pair(given_stride)
    fixed_phase = (0.0, 0.0) if given_phase is None else numbers_or_none(given_phase)
    if (whole is not None and min(whole) >= 1 and fixed_phase is not None and
            not torch.jit.is_tracing() and
            _form_is_faster(input.device, fixed_phase)):
        # Concrete sizes pad exactly the rows read; symbolic ones (export) the size's own way.
        concrete = all(isinstance(v, int) for v in (*input.shape, *output_size))
        return _on_fixed_grid(input, weight, whole, bias, padding, dilation, groups,
                              output_size if concrete or not own_size else None, fixed_phase)
    if has_kernel(input.device):  # the compiled op checks the stride and phase values itself
        return torch.ops.mmlstride.ls_conv2d(input, weight, stride, bias, padding, dilation, groups,
                                             output_size, phase)
    if not is_compiling():
        if not stride_checked:
            stride_values(stride)
        if phase is not None:
            check_phase_values(phase)
    return ls_conv2d_reference(input, weight, stride, bias, padding, dilation, groups, output_size,
                               phase)


def _register_torch_library() -> None:
    """Fake (shape) and autograd implementations of the compiled ops."""

    def fake_forward(input, weight, stride, bias, padding, dilation, groups, output_size,
                     phase=None):
        check_fake_shapes(input, weight, stride, bias, groups, phase)
        return input.new_empty((input.shape[0], weight.shape[0], *output_size))

    def fake_backward(grad_output, input, weight, stride, phase, padding, dilation, groups,
                      output_mask):
        grads = (input.new_empty(input.shape), weight.new_empty(weight.shape),
                 stride.new_empty(stride.shape), weight.new_empty(weight.shape[0]),
                 phase.new_empty(phase.shape) if phase is not None else None)
        return tuple(grad if needed else None for grad, needed in zip(grads, output_mask))

    register_fake('mmlstride::ls_conv2d', fake_forward)
    register_fake('mmlstride::ls_conv2d_backward', fake_backward)

    def setup_context(ctx, inputs, output):
        input, weight, stride, bias, padding, dilation, groups, _, phase = inputs
        ctx.save_for_backward(input, weight, stride, phase)
        ctx.conv_args = (padding, dilation, groups)

    def backward(ctx, grad_output):
        input, weight, stride, phase = ctx.saved_tensors
        # (input, weight, stride, bias, phase): the schema's tensors.
        needs = ctx.needs_input_grad
        output_mask = [*needs[:4], phase is not None and needs[8]]
        grad_input, grad_weight, grad_stride, grad_bias, grad_phase = \
            torch.ops.mmlstride.ls_conv2d_backward(grad_output, input, weight, stride, phase,
                                                   *ctx.conv_args, output_mask)
        return grad_input, grad_weight, grad_stride, grad_bias, None, None, None, None, grad_phase

    register_autograd('mmlstride::ls_conv2d', backward, setup_context)


if EXTENSION_ERROR is None:
    _register_torch_library()

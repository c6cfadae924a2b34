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

from .extension import EXTENSION_ERROR, has_kernel
from .ls_conv2d_export import ls_conv2d_at_integer_stride, ls_conv2d_by_sampling
from .ls_conv2d_reference import ls_conv2d_reference
from ..torch_compat import (autocast_dtype, autocast_enabled, is_compiling, is_exporting,
                            onnx_export_opset, register_autograd, register_fake)

IntPair = Union[int, Sequence[int]]
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _int_pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    """``value`` as a pair of ints >= ``minimum``, or a ValueError naming ``name``. Symbolic
    sizes (torch.SymInt, under torch.export with dynamic shapes) pass as they are."""
    pair = (value, value) if isinstance(value, (int, torch.SymInt)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, torch.SymInt) or
                                 (isinstance(v, int) and not isinstance(v, bool) and v >= minimum)
                                 for v in pair):
        raise ValueError(f'{name}={value!r} expected an int or a pair of ints >= {minimum}')
    return pair


# ONNX has GridSample with the 'bilinear' mode TensorRT reads in opsets 16 to 19.
ONNX_OPSETS = range(16, 20)


def _check_onnx_opset() -> None:
    """Raises a ValueError when the running TorchScript-based ONNX export targets an opset
    without the bilinear GridSample LSConv exports to."""
    opset = onnx_export_opset()
    if not is_exporting() and opset not in ONNX_OPSETS:
        raise ValueError(f'opset_version={opset} expected 16 to 19: LSConv exports to ONNX '
                         "GridSample (opset 16) with mode 'bilinear' (opsets 16-19)")


def _whole_constant(value) -> Optional[Tuple[int, int]]:
    """``value`` as two ints when it is a pair of whole numbers given as numbers, not as a
    tensor; else None."""
    if isinstance(value, Tensor) or value is None:
        return None
    pair = _pair_of_numbers(value)
    if pair is None or not all(v == math.floor(v) for v in pair):
        return None
    return tuple(int(v) for v in pair)


def _pair_of_numbers(value) -> Optional[Tuple[float, float]]:
    """``value`` (numbers, not a tensor) as two floats, or None."""
    values = [value] * 2 if isinstance(value, (int, float)) else list(value)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                                   math.isfinite(v) for v in values):
        return None
    return (float(values[0]), float(values[1]))


def _export_in_standard_operators(input, weight, stride, bias, padding, dilation, groups,
                                  output_size, phase, given_stride, given_phase,
                                  own_size: bool) -> Tensor:
    """LSConv in standard ONNX operators (:mod:`mmlstride.ops.ls_conv2d_export`): a plain
    convolution at whole strides and a constant phase given as numbers, else GridSample;
    ``own_size``: ``output_size`` is the default one, computed from the stride."""
    _check_onnx_opset()
    whole = _whole_constant(given_stride)
    constant_phase = (0.0, 0.0) if given_phase is None else (
        None if isinstance(given_phase, Tensor) else _pair_of_numbers(given_phase))
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


def _check_tensor(tensor: Tensor, name: str, input: Tensor, same_dtype: bool) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f'{name} is a {type(tensor).__name__}, expected a torch.Tensor')
    if same_dtype and tensor.dtype != input.dtype:
        raise TypeError(f'{name}.dtype={tensor.dtype} expected {input.dtype} (the dtype of input)')
    if not tensor.dtype.is_floating_point:
        raise TypeError(f'{name}.dtype={tensor.dtype} expected a floating-point dtype')
    if tensor.device != input.device:
        raise ValueError(f'{name}.device={tensor.device} expected {input.device} '
                         '(the device of input)')


def _check_arguments(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                     padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                     phase: Optional[Tensor] = None) -> None:
    """Raises a TypeError or ValueError naming the first argument that is not valid.

    Only shapes, dtypes and devices are checked here (no data access, so this
    traces under torch.compile); the stride values are checked where they are read.
    Under autocast, input, weight and bias may differ in dtype: the op casts them.
    The stride and the phase may have any floating dtype.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f'input is a {type(input).__name__}, expected a torch.Tensor')
    autocast = autocast_enabled(input.device)
    if input.device.type == 'cpu':
        dtypes, names = _CPU_DTYPES, 'torch.float32 or torch.float64 on cpu (float16 and ' \
                                     'bfloat16 run on CUDA)'
    else:
        dtypes, names = _CUDA_DTYPES, 'torch.float32, torch.float64, torch.float16 or ' \
                                      'torch.bfloat16'
    if not (autocast and input.dtype.is_floating_point) and input.dtype not in dtypes:
        raise TypeError(f'input.dtype={input.dtype} expected {names}')
    for tensor, name in ((weight, 'weight'), (stride, 'stride'), (bias, 'bias'),
                         (phase, 'phase')):
        if tensor is not None:
            _check_tensor(tensor, name, input,
                          same_dtype=not autocast and name in ('weight', 'bias'))
    if input.dim() != 4:
        raise ValueError(f'input.dim()={input.dim()} expected 4 (N, C, H, W)')
    if weight.dim() != 4:
        raise ValueError(f'weight.dim()={weight.dim()} expected 4 '
                         '(out_channels, in_channels / groups, kernel_h, kernel_w)')
    if stride.shape != (2, ):
        raise ValueError(f'stride.shape={tuple(stride.shape)} expected (2,) = (stride_h, stride_w)')
    if phase is not None and phase.shape != (2, ):
        raise ValueError(f'phase.shape={tuple(phase.shape)} expected (2,) = (phase_h, phase_w)')
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f'groups={groups!r} expected an int >= 1')
    channels, out_channels = input.shape[1], weight.shape[0]
    if channels % groups or out_channels % groups:
        raise ValueError(f'groups={groups} expected to divide input channels={channels} '
                         f'and weight.shape[0]={out_channels}')
    if weight.shape[1] * groups != channels:
        raise ValueError(f'weight.shape[1]={weight.shape[1]} expected input channels / groups '
                         f'= {channels // groups}')
    if bias is not None and bias.shape != (out_channels, ):
        raise ValueError(f'bias.shape={tuple(bias.shape)} expected ({out_channels},)')
    for k, axis in enumerate('hw'):
        extent = dilation[k] * (weight.shape[2 + k] - 1) + 1
        padded = input.shape[2 + k] + 2 * padding[k]
        if extent > padded:
            raise ValueError(f'kernel extent along {axis}={extent} (dilation * (kernel - 1) + 1) '
                             f'expected <= padded input size={padded}')


def _stride_values(stride: Tensor) -> Tuple[float, float]:
    """The stride as two Python floats, or a ValueError unless both are finite and > 0."""
    values = tuple(stride.detach().cpu().double().tolist())
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f'stride={values} expected finite values > 0')
    return values


def _check_phase_values(phase: Tensor) -> None:
    """A ValueError unless both values of the phase are finite."""
    values = tuple(phase.detach().cpu().double().tolist())
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'phase={values} expected finite values')


def _as_tensor(value, input: Tensor) -> Tensor:
    """A stride or phase given as numbers, as a tensor on input's device (float64 for float64
    input, else float32)."""
    if isinstance(value, Tensor) or not isinstance(input, Tensor):
        return value
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    return torch.as_tensor(value, dtype=dtype, device=input.device)


def default_output_size(input_size: Sequence[int], kernel_size: Sequence[int],
                        stride: Sequence[float], padding: Sequence[int],
                        dilation: Sequence[int]) -> Tuple[int, int]:
    """floor((H + 2p - d(k - 1) - 1) / s) + 1 per axis: nn.Conv2d's size, for a real stride."""
    return tuple(
        math.floor((input_size[k] + 2 * padding[k] - dilation[k] * (kernel_size[k] - 1) - 1) /
                   stride[k]) + 1 for k in range(2))


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
    padding = _int_pair(padding, 'padding', 0)
    dilation = _int_pair(dilation, 'dilation', 1)
    _check_arguments(input, weight, stride, bias, padding, dilation, groups, phase)
    stride_checked = own_size = output_size is None
    if output_size is None:
        # From the numbers when given as numbers: known under torch.export, unlike a tensor's.
        numbers = None if isinstance(given_stride, Tensor) else _pair_of_numbers(given_stride)
        values = numbers if numbers and min(numbers) > 0 else _stride_values(stride)
        output_size = default_output_size(input.shape[2:], weight.shape[2:], values, padding,
                                          dilation)
    else:
        output_size = _int_pair(output_size, 'output_size', 1)
    if torch.onnx.is_in_onnx_export():  # standard operators only
        return _export_in_standard_operators(input, weight, stride, bias, padding, dilation,
                                             groups, output_size, phase, given_stride,
                                             given_phase, own_size)
    whole = _whole_constant(given_stride)
    fixed_phase = (0.0, 0.0) if given_phase is None else _pair_of_numbers(given_phase)
    if (whole is not None and min(whole) >= 1 and fixed_phase is not None and
            not torch.jit.is_tracing() and
            _form_is_faster(input.device, fixed_phase)):
        # Concrete sizes pad exactly the rows read; symbolic ones (export) the size's own way.
        concrete = all(isinstance(v, int) for v in (*input.shape, *output_size))
        return _on_fixed_grid(input, weight, whole, bias, padding, dilation, groups,
                              output_size if concrete or not own_size else None, fixed_phase)
    if has_kernel(input.device):  # the compiled op checks the stride and phase values itself
        return torch.ops.mmlstride.ls_conv2d(input, weight, bias, stride, padding, dilation, groups,
                                             output_size, phase)
    if not is_compiling():
        if not stride_checked:
            _stride_values(stride)
        if phase is not None:
            _check_phase_values(phase)
    return ls_conv2d_reference(input, weight, stride, bias, padding, dilation, groups, output_size,
                               phase)


def _register_torch_library() -> None:
    """Fake (shape) and autograd implementations of the compiled ops."""

    def fake_forward(input, weight, bias, stride, padding, dilation, groups, output_size,
                     phase=None):
        return input.new_empty((input.shape[0], weight.shape[0], *output_size))

    def fake_backward(grad_output, input, weight, stride, phase, padding, dilation, groups,
                      output_mask):
        grads = (input.new_empty(input.shape), weight.new_empty(weight.shape),
                 weight.new_empty(weight.shape[0]), stride.new_empty(stride.shape),
                 phase.new_empty(phase.shape) if phase is not None else None)
        return tuple(grad if needed else None for grad, needed in zip(grads, output_mask))

    register_fake('mmlstride::ls_conv2d', fake_forward)
    register_fake('mmlstride::ls_conv2d_backward', fake_backward)

    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, _, phase = inputs
        ctx.save_for_backward(input, weight, stride, phase)
        ctx.conv_args = (padding, dilation, groups)

    def backward(ctx, grad_output):
        input, weight, stride, phase = ctx.saved_tensors
        # (input, weight, bias, stride, phase): the schema's tensors.
        needs = ctx.needs_input_grad
        output_mask = [*needs[:4], phase is not None and needs[8]]
        grad_input, grad_weight, grad_bias, grad_stride, grad_phase = \
            torch.ops.mmlstride.ls_conv2d_backward(grad_output, input, weight, stride, phase,
                                                   *ctx.conv_args, output_mask)
        return grad_input, grad_weight, grad_bias, grad_stride, None, None, None, None, grad_phase

    register_autograd('mmlstride::ls_conv2d', backward, setup_context)


if EXTENSION_ERROR is None:
    _register_torch_library()

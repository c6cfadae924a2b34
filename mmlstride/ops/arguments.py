"""The checks of LSConv's arguments, for the function and the layer: each bad argument raises a
ValueError (values, shapes, devices) or TypeError (types, dtypes) that names it and says what
was expected. The compiled op checks its own arguments the same way (``csrc/pytorch``) for
callers that reach it directly."""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..torch_compat import autocast_enabled

Pair = Tuple[Union[int, float], Union[int, float]]
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _as_pair(value, integer: bool, minimum: Optional[float]) -> Optional[Pair]:
    """``value`` as a pair (see :func:`pair`), or None where it is not one."""
    kind = (torch.SymInt, numbers.Integral) if integer else (numbers.Real, )
    values = [value] * 2 if isinstance(value, kind) else value
    if not isinstance(values, (list, tuple, torch.Size)) or len(values) != 2:
        return None
    result = []
    for v in values:
        if isinstance(v, torch.SymInt) and integer:
            result.append(v)
            continue
        if not isinstance(v, kind) or isinstance(v, (bool, Tensor)):
            return None
        if not (integer or math.isfinite(v)) or (minimum is not None and v < minimum):
            return None
        result.append(int(v) if integer else float(v))
    return (result[0], result[1])


def pair(value, name: str, integer: bool = False, minimum: Optional[float] = None,
         expected: Optional[str] = None, tensor: bool = False) -> Pair:
    """``value``, a number or a sequence of two, as a pair: ints with ``integer`` (symbolic
    sizes under torch.export pass as they are), else finite floats; each >= ``minimum`` when
    given; with ``tensor``, also a tensor of one or two values. Otherwise a ValueError naming
    ``name`` that says ``expected`` (by default, what the other arguments ask for). Bools are
    not numbers here."""
    plain = value.detach().cpu().tolist() if tensor and isinstance(value, Tensor) else value
    result = _as_pair(plain[0] if isinstance(plain, list) and len(plain) == 1 else plain,
                      integer, minimum)
    if result is None:
        if expected is None:
            bound = '' if minimum is None else f' >= {minimum}'
            expected = (f'an int{bound} or a pair of ints{bound}' if integer else
                        f'a finite number{bound} or a pair of them')
        raise ValueError(f'{name}={value!r} expected {expected}')
    return result


def numbers_or_none(value) -> Optional[Tuple[float, float]]:
    """``value`` as two finite floats when it is a number or a pair of numbers (not a
    tensor), else None."""
    return _as_pair(value, integer=False, minimum=None)


def whole_pair(value) -> Optional[Tuple[int, int]]:
    """``value`` as two ints when it is a pair of whole numbers given as numbers, else None."""
    values = numbers_or_none(value)
    if values is None or not all(v == math.floor(v) for v in values):
        return None
    return (int(values[0]), int(values[1]))


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


def check_arguments(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                    padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                    phase: Optional[Tensor] = None) -> None:
    """Raises a TypeError or ValueError naming the first argument of ``ls_conv2d`` that is not
    valid.

    Only shapes, dtypes and devices are checked here (no data access, so this traces under
    torch.compile); the stride's and the phase's values are checked where they are read
    (:func:`stride_values`, :func:`check_phase_values`, or the compiled op). Under autocast,
    input, weight and bias may differ in dtype: the op casts them. The stride and the phase
    may have any floating dtype.
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


def stride_values(stride: Tensor) -> Tuple[float, float]:
    """The stride as two Python floats, or a ValueError unless both are finite and > 0."""
    values = tuple(stride.detach().cpu().double().tolist())
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f'stride={values} expected finite values > 0')
    return values


def check_phase_values(phase: Tensor) -> None:
    """A ValueError unless both values of the phase are finite."""
    values = tuple(phase.detach().cpu().double().tolist())
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'phase={values} expected finite values')


def check_fake_shapes(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                      groups: int, phase: Optional[Tensor]) -> None:
    """The shape checks of :func:`check_arguments` as ``torch._check`` calls, for the op's fake
    kernel, where sizes may be symbolic (torch.compile, torch.export)."""
    torch._check(input.dim() == 4, lambda: f'input.dim()={input.dim()} expected 4')
    torch._check(weight.dim() == 4, lambda: f'weight.dim()={weight.dim()} expected 4')
    torch._check(stride.shape == (2, ), lambda: f'stride.shape={tuple(stride.shape)} expected (2,)')
    torch._check(phase is None or phase.shape == (2, ),
                 lambda: f'phase.shape={tuple(phase.shape)} expected (2,)')
    torch._check(weight.shape[1] * groups == input.shape[1],
                 lambda: f'weight.shape[1]={weight.shape[1]} expected input channels / groups')
    torch._check(bias is None or bias.shape == (weight.shape[0], ),
                 lambda: f'bias.shape={tuple(bias.shape)} expected ({weight.shape[0]},)')


def default_output_size(input_size: Sequence[int], kernel_size: Sequence[int],
                        stride: Sequence[float], padding: Sequence[int],
                        dilation: Sequence[int]) -> Tuple[int, int]:
    """floor((H + 2p - d(k - 1) - 1) / s) + 1 per axis: nn.Conv2d's size, for a real stride."""
    return tuple(
        math.floor((input_size[k] + 2 * padding[k] - dilation[k] * (kernel_size[k] - 1) - 1) /
                   stride[k]) + 1 for k in range(2))

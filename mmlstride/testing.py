"""Independent references for LSConv (docs/op.md, "Independent references") and random cases,
for tests and tools."""
import contextlib
import math
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmlstride.ops.ls_conv2d_reference import ls_conv2d_reference


def ls_conv2d_by_deform_conv(deform_conv2d: Callable, input: Tensor, weight: Tensor,
                             stride: Tensor, bias: Optional[Tensor], padding: Tuple[int, int],
                             dilation: Tuple[int, int], groups: int,
                             output_size: Tuple[int, int],
                             phase: Optional[Tensor] = None) -> Tensor:
    """LSConv computed by a deformable convolution with the equivalent offsets.

    A stride-1 DCN with padding P samples output (a, b), tap (i, j) at
    (a - P_h + i d_h, b - P_w + j d_w); the offset (a (s_h - 1) + t_h + P_h - p_h,
    b (s_w - 1) + t_w + P_w - p_w) moves it to LSConv's sample point. P is chosen so
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
        offset = index * (stride[k] - 1) + (big_pad[k] - padding[k])
        offsets.append(offset if phase is None else offset + phase[k].to(input.dtype))
    off_h, off_w = torch.meshgrid(offsets[0], offsets[1], indexing='ij')
    # Channel 2t is the h offset of tap t = i * kw + j, channel 2t + 1 its w offset.
    offset = torch.stack((off_h, off_w)).repeat(kh * kw, 1, 1)
    pad_h = input.shape[2] + 2 * big_pad[0] - dilation[0] * (kh - 1)
    pad_w = input.shape[3] + 2 * big_pad[1] - dilation[1] * (kw - 1)
    offset = F.pad(offset, (0, pad_w - output_size[1], 0, pad_h - output_size[0]))
    offset = offset.unsqueeze(0).expand(input.shape[0], -1, -1, -1).contiguous()
    # (mmcv's is an autograd.Function's apply, whose __module__ is None on torch 2.14.)
    if (getattr(deform_conv2d, '__module__', None) or '').startswith('torchvision'):
        out = deform_conv2d(input, offset, weight, None, stride=1, padding=tuple(big_pad),
                            dilation=dilation)
    else:
        out = deform_conv2d(input, offset, weight, 1, tuple(big_pad), dilation, groups, 1)
    out = out[:, :, :output_size[0], :output_size[1]]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def interpolation_matrix(position: Tensor, size: int) -> Tensor:
    """Weights (..., size) of MMCV's bilinear rule along one axis at ``position`` (...).

    ``(1 - f)`` at ``floor(p)`` and ``f`` at ``floor(p) + 1`` with ``f = p - floor(p)``,
    neighbours outside ``[0, size)`` dropped, and all 0 where ``p <= -1`` or ``p >= size``.
    Autograd differentiates ``f`` only, so at an integer position the derivative is the one
    from the right (the kink convention of MMCV's ``get_coordinate_weight`` and of the op),
    and at exactly ``p = -1`` it is 0 (the sample counts as outside, as in MMCV).
    """
    low = torch.floor(position.detach())
    frac = position - low
    index = torch.arange(size, dtype=position.dtype, device=position.device)
    at_low = (index == low[..., None]).to(position.dtype)
    at_high = (index == low[..., None] + 1).to(position.dtype)
    inside = ((position.detach() > -1) & (position.detach() < size)).to(position.dtype)
    return inside[..., None] * ((1 - frac)[..., None] * at_low + frac[..., None] * at_high)


def ls_conv2d_by_interpolation(input: Tensor, weight: Tensor, stride: Tensor,
                               bias: Optional[Tensor], padding: Tuple[int, int],
                               dilation: Tuple[int, int], groups: int,
                               output_size: Tuple[int, int],
                               phase: Optional[Tensor] = None) -> Tensor:
    """LSConv straight from its definition (docs/op.md, "What the op computes"): every sample
    is a product of the two axes' :func:`interpolation_matrix`, so its stride derivative at
    pixel positions follows the op's convention, unlike ``grid_sample``'s at ``p = -1``. Dense
    and small: for tests."""
    n, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = output_size
    axes = []
    for k, (out, taps, size) in enumerate(((out_h, kh, height), (out_w, kw, width))):
        index = torch.arange(out, dtype=input.dtype, device=input.device)
        tap = torch.arange(taps, dtype=input.dtype, device=input.device) * dilation[k]
        position = index[:, None] * stride[k].to(input.dtype) - padding[k] + tap[None, :]
        if phase is not None:
            position = position + phase[k].to(input.dtype)
        axes.append(interpolation_matrix(position, size))  # (out, taps, size)
    samples = torch.einsum('aiy,ncyx,bjx->ncijab', axes[0], input, axes[1])
    samples = samples.reshape(n, groups, group_channels, kh, kw, out_h, out_w)
    grouped = weight.reshape(groups, out_channels // groups, group_channels, kh, kw)
    out = torch.einsum('ngcijab,gocij->ngoab', samples, grouped).reshape(n, out_channels,
                                                                        out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are empty or zero)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    diff = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return diff / scale if scale > 0 else diff


def norm_relative_error(actual: Tensor, expected: Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius; 0 when both are empty or zero)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.norm().item()
    diff = (actual - expected).norm().item()
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
    phase: Optional[torch.Tensor] = None

    def args(self):
        return (self.input, self.weight, self.stride, self.bias, self.padding, self.dilation,
                self.groups, self.output_size, self.phase)

    def leaves(self):
        return [t for t in (self.input, self.weight, self.bias, self.stride, self.phase)
                if t is not None]

    def to(self, dtype: torch.dtype, device: Union[str, torch.device] = 'cpu',
           stride_dtype: Optional[torch.dtype] = None) -> 'Case':
        """A copy with new leaf tensors: input, weight and bias in ``dtype`` on ``device``,
        the stride and the phase in ``stride_dtype`` (default: float32 for float16 and
        bfloat16, else ``dtype``)."""
        if stride_dtype is None:
            stride_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

        def leaf(t, leaf_dtype):
            if t is None:
                return None
            return t.detach().to(device=device, dtype=leaf_dtype).requires_grad_()

        return Case(leaf(self.input, dtype), leaf(self.weight, dtype),
                    leaf(self.stride, stride_dtype), leaf(self.bias, dtype), self.padding,
                    self.dilation, self.groups, self.output_size, leaf(self.phase, stride_dtype))


def random_case(seed: int, dtype=torch.float64, batch: Optional[int] = None,
                device: Union[str, torch.device] = 'cpu', phase: bool = False) -> Case:
    """A random valid case: groups, dilation, padding, asymmetric fractional strides; with
    ``phase``, a phase in (-2, 2) per axis too (the rest of the case is the same)."""
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
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device).requires_grad_()

    case = Case(
        input=randn(batch, channels, *size),
        weight=randn(out_channels, channels // groups, *kernel),
        stride=torch.tensor(stride, dtype=dtype, device=device, requires_grad=True),
        bias=randn(out_channels) if rng.random() < 0.7 else None,
        padding=padding,
        dilation=dilation,
        groups=groups,
        output_size=output_size)
    if phase:
        # Irrational multiples, so that (with the strides') no sample sits on a kink.
        phase_rng = random.Random(seed + 7919)
        values = [phase_rng.choice((-1.0, 1.0)) * phase_rng.choice(FRACTIONAL_STRIDES) / 2.3
                  for _ in range(2)]
        case.phase = torch.tensor(values, dtype=dtype, device=device, requires_grad=True)
    return case


@contextlib.contextmanager
def onednn_enabled(enabled: bool) -> Iterator[None]:
    """``torch.backends.mkldnn.enabled`` set to ``enabled`` within the block: whether the
    CPU op's float32 products go through oneDNN (else ATen's, as the host code CUDA shares)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def compiled_op(input: Tensor, weight: Tensor, stride: Tensor, bias: Optional[Tensor],
                padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                output_size: Tuple[int, int], phase: Optional[Tensor] = None) -> Tensor:
    """The compiled op, torch.ops.mmlstride.ls_conv2d, called with ``Case.args()``."""
    return torch.ops.mmlstride.ls_conv2d(input, weight, stride, bias, padding, dilation, groups,
                                         output_size, phase)


def output_gradient(case: Case, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A fixed random gradient for the output of ``case`` (float64, on the CPU, or ``dtype``)."""
    shape = (case.input.shape[0], case.weight.shape[0], *case.output_size)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return grad if dtype is None else grad.to(dtype)


def evaluate(function: Callable[..., Tensor], case: Case, grad_output: Tensor) -> Dict[str, Tensor]:
    """'output' of ``function(*case.args())`` and 'grad_<name>' of each leaf for ``grad_output``
    (cast to the output's dtype and device)."""
    out = function(*case.args())
    results = {'output': out}
    names = [name for name, t in (('input', case.input), ('weight', case.weight),
                                  ('bias', case.bias), ('stride', case.stride),
                                  ('phase', case.phase)) if t is not None]
    grads = torch.autograd.grad(out, case.leaves(), grad_output.to(out.dtype).to(out.device))
    results.update(('grad_' + name, grad) for name, grad in zip(names, grads))
    return results


def errors(actual: Dict[str, Tensor], expected: Dict[str, Tensor],
           error: Callable[[Tensor, Tensor], float] = relative_error) -> Dict[str, float]:
    """``error(actual[k], expected[k])`` for every key, after checking the output shapes."""
    if actual['output'].shape != expected['output'].shape:
        raise AssertionError(f'output shape {tuple(actual["output"].shape)} != '
                             f'{tuple(expected["output"].shape)}')
    return {key: error(actual[key], expected[key]) for key in expected}


def compiled_errors(case: Case, reference: Callable[..., Tensor]) -> Dict[str, float]:
    """Relative errors of the compiled op against ``reference(*case.args())``.

    Keys: 'output', and 'grad_input', 'grad_weight', 'grad_bias', 'grad_stride', 'grad_phase'
    for one fixed random output gradient ('grad_bias' only when the case has a bias,
    'grad_phase' when it has a phase).
    """
    grad_output = output_gradient(case)
    return errors(evaluate(compiled_op, case, grad_output), evaluate(reference, case, grad_output))


def float64_reference_errors(case: Case, dtype: torch.dtype,
                             device: Union[str, torch.device]) -> Dict[str, float]:
    """Norm-relative errors of the compiled op run in ``dtype`` on ``device`` against the
    pure-PyTorch reference in float64 on the CPU, both given the inputs (and the output
    gradient) rounded to ``dtype``, so only the op's own arithmetic is measured."""
    low = case.to(dtype, device)
    exact = low.to(torch.float64, 'cpu')
    grad_output = output_gradient(case, dtype)
    return errors(evaluate(compiled_op, low, grad_output),
                  evaluate(ls_conv2d_reference, exact, grad_output.double()), norm_relative_error)

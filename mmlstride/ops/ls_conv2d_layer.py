"""``LSConv2d``: a drop-in nn.Conv2d whose stride is learned, registered as ``'LSConv'``."""
from typing import Tuple, Union

import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from .ls_conv2d_function import default_output_size, ls_conv2d

IntPair = Union[int, Tuple[int, int]]


class _BoundedStride(torch.autograd.Function):
    """Clamps the stride to [low, high]; the gradient is blocked only where a
    descent step would push a stride further out of the bounds, so a stride
    sitting on a bound can still move back in."""

    @staticmethod
    def forward(stride: Tensor, low: Tensor, high: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(stride, low), high)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        stride, low, high = ctx.saved_tensors
        outward = ((stride >= high) & (grad < 0)) | ((stride <= low) & (grad > 0))
        return grad.masked_fill(outward, 0), None, None


@MODELS.register_module('LSConv')
class LSConv2d(nn.Conv2d):
    """2-D convolution with a learnable real stride (s_h, s_w).

    A drop-in for nn.Conv2d: same arguments, ``weight``/``bias`` parameters,
    initialisation and output size (that of the nominal integer ``stride``), so
    nn.Conv2d state dicts load into it and networks keep their shapes. The
    learned stride only moves where the output pixels sample the input: output
    (a, b) reads the input at (a * s_h - p_h, b * s_w - p_w) plus the kernel
    taps, by bilinear interpolation (see :func:`mmlstride.ops.ls_conv2d`).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups, bias, device, dtype: as in nn.Conv2d. ``stride`` is the nominal
            stride: it sets the output size and the initial learned stride.
            Only zero padding given as ints is supported.
        stride_bounds: (low, high) multiples of the nominal stride between which
            the learned stride is clamped in the forward pass; default
            (0.25, 4.0), i.e. [0.5, 8] pixels for a nominal stride of 2.

    Attributes:
        learnable_stride: nn.Parameter tensor([s_h, s_w]) in input pixels,
            initialised to the nominal stride. A checkpoint without it (an
            nn.Conv2d one) loads with it reset to the nominal stride.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: IntPair,
                 stride: IntPair = 1,
                 padding: IntPair = 0,
                 dilation: IntPair = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 stride_bounds: Tuple[float, float] = (0.25, 4.0)) -> None:
        if isinstance(padding, str):
            raise ValueError(f'padding={padding!r} expected an int or a pair of ints')
        if padding_mode != 'zeros':
            raise ValueError(f"padding_mode={padding_mode!r} expected 'zeros'")
        low, high = stride_bounds
        if not 0 < low <= 1 <= high:
            raise ValueError(f'stride_bounds={stride_bounds!r} expected (low, high) '
                             'with 0 < low <= 1 <= high')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self.stride_bounds = (float(low), float(high))
        factory = dict(device=self.weight.device, dtype=self.weight.dtype)
        nominal = torch.tensor(self.stride, **factory)
        self.learnable_stride = nn.Parameter(nominal.clone())
        self.register_buffer('stride_min', nominal * low, persistent=False)
        self.register_buffer('stride_max', nominal * high, persistent=False)

    def reset_stride(self) -> None:
        """Sets the learned stride back to the nominal stride."""
        with torch.no_grad():
            self.learnable_stride.copy_(torch.tensor(self.stride))

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:
            raise ValueError(f'input.dim()={input.dim()} expected 4 (N, C, H, W)')
        stride = _BoundedStride.apply(self.learnable_stride, self.stride_min, self.stride_max)
        output_size = default_output_size(input.shape[2:], self.kernel_size, self.stride,
                                          self.padding, self.dilation)
        return ls_conv2d(input, self.weight, stride, self.bias, self.padding, self.dilation,
                         self.groups, output_size)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + 'learnable_stride'
        if key in missing_keys:  # an nn.Conv2d checkpoint: start from the nominal stride
            missing_keys.remove(key)
            self.reset_stride()

    def extra_repr(self) -> str:
        learned = ', '.join(f'{v:.4f}' for v in self.learnable_stride.detach().cpu().tolist())
        return f'{super().extra_repr()}, learnable_stride=({learned})'

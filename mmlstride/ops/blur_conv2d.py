"""``BlurConv2d``: a strided convolution anti-aliased by a fixed binomial blur (BlurPool), the
fixed anti-aliasing baseline LSConv is compared with."""
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ORDERS = ('conv-blur', 'blur-conv')


def binomial_filter(size: int) -> Tensor:
    """The normalised 2-D binomial filter of ``size`` x ``size`` taps: the outer product of a
    row of Pascal's triangle with itself ([1, 2, 1] / 4 along each axis for size 3)."""
    row = torch.ones(1, dtype=torch.float64)
    for _ in range(size - 1):
        row = torch.cat([row, row.new_zeros(1)]) + torch.cat([row.new_zeros(1), row])
    row = row / row.sum()
    return row[:, None] * row[None, :]


class BlurConv2d(nn.Conv2d):
    """nn.Conv2d whose subsampling is anti-aliased by a fixed binomial low-pass filter, as
    BlurPool does (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019).

    Same arguments, parameters (``weight``, ``bias``: nn.Conv2d state dicts load) and output
    size as nn.Conv2d. With a stride above 1 it computes, by ``order``:

    - ``'conv-blur'`` (Zhang's placement): the conv at stride 1, then the blur subsampled at the
      stride. Costs the conv's multiply-adds at stride 1 (4x at stride 2).
    - ``'blur-conv'``: the blur at stride 1, then the conv at the stride (the conv's own cost
      plus a depthwise blur).

    The blur is depthwise, ``filter_size`` x ``filter_size`` binomial taps (3: [1, 2, 1] x
    [1, 2, 1] / 16), over the map padded by reflection as BlurPool pads, centred on the
    positions the strided conv samples. At stride 1 the layer is a plain conv.

    nn.Conv2d's arguments mean what they mean there (zero padding given as ints).

    Args:
        order: ``'conv-blur'`` (default) or ``'blur-conv'``.
        filter_size: taps of the binomial filter per axis, 2 to 7; default 3.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 order: str = 'conv-blur',
                 filter_size: int = 3) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r} expected 'conv-blur' or 'blur-conv'")
        if isinstance(filter_size, bool) or not isinstance(filter_size, int) or \
                not 2 <= filter_size <= 7:
            raise ValueError(f'filter_size={filter_size!r} expected an int from 2 to 7')
        if isinstance(padding, str):
            raise ValueError(f'padding={padding!r} expected an int or a pair of ints')
        if padding_mode != 'zeros':
            raise ValueError(f"padding_mode={padding_mode!r} expected 'zeros'")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self.order = order
        self.filter_size = filter_size
        self.register_buffer('blur_filter', binomial_filter(filter_size)[None, None].to(
            device=self.weight.device, dtype=self.weight.dtype), persistent=False)

    def blur(self, x: Tensor, stride: Tuple[int, int]) -> Tensor:
        """The depthwise binomial blur of ``x``, subsampled at ``stride``."""
        before = (self.filter_size - 1) // 2
        after = self.filter_size - 1 - before
        padded = F.pad(x, (before, after, before, after), mode='reflect')
        channels = x.shape[1]
        weight = self.blur_filter.to(x.dtype).expand(channels, 1, -1, -1)
        return F.conv2d(padded, weight, stride=stride, groups=channels)

    def forward(self, input: Tensor) -> Tensor:
        if max(self.stride) == 1:
            return super().forward(input)
        if self.order == 'conv-blur':
            full = F.conv2d(input, self.weight, self.bias, 1, self.padding, self.dilation,
                            self.groups)
            return self.blur(full, self.stride)
        return F.conv2d(self.blur(input, (1, 1)), self.weight, self.bias, self.stride,
                        self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, order={self.order}, filter_size={self.filter_size}'

"""Random LSConv cases shared by the tests."""
import random
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

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

    def args(self):
        return (self.input, self.weight, self.stride, self.bias, self.padding, self.dilation,
                self.groups, self.output_size)

    def leaves(self):
        return [t for t in (self.input, self.weight, self.bias, self.stride) if t is not None]


def random_case(seed: int, dtype=torch.float64, batch: Optional[int] = None) -> Case:
    """A random valid case: groups, dilation, padding, asymmetric fractional strides."""
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
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    return Case(
        input=randn(batch, channels, *size),
        weight=randn(out_channels, channels // groups, *kernel),
        stride=torch.tensor(stride, dtype=dtype, requires_grad=True),
        bias=randn(out_channels) if rng.random() < 0.7 else None,
        padding=padding,
        dilation=dilation,
        groups=groups,
        output_size=output_size)

"""The fixed-grid benchmark (``tools/benchmark_fixed_grid.py``): the layer kinds and shapes, the
methods that compute a whole, frozen stride at a constant phase (``F.conv2d``, the sampling op,
its pooling-and-convolution form, a frozen ``LSConv2d``) and their forward and forward+backward
times."""
import statistics
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from ..ops import LSConv2d, ls_conv2d
from ..ops.ls_conv2d_export import ls_conv2d_at_integer_stride
from .timing import elapsed_ms

# name: (kernel, padding, phase); stride 2 in every kind.
KINDS = {
    '3x3 half phase': (3, 1, (0.5, 0.5)),
    '1x1 half phase': (1, 0, (0.5, 0.5)),
    '3x3 no phase': (3, 1, (0.0, 0.0)),
}
# name: (batch, channels, height, width)
SHAPES = {'r50-s2': (8, 128, 56, 56), 'r50-s3': (8, 256, 28, 28), 'r50-s4': (8, 512, 14, 14),
          'det-200': (2, 64, 200, 336)}
METHODS = ('conv2d', 'op', 'form', 'layer')
STEPS = ('forward', 'forward+backward')

Shape = Tuple[int, int, int, int]


def methods(kind: str, shape: Shape, device: str, dtype: torch.dtype) -> Dict[str, Callable]:
    """Each method as a function of (input, weight, bias)."""
    kernel, padding, phase = KINDS[kind]
    stride = torch.tensor([2.0, 2.0], device=device)
    phase_tensor = torch.tensor(phase, device=device)
    layer = LSConv2d(shape[1], shape[1], kernel, stride=2, padding=padding, phase=phase,
                     device=device, dtype=dtype)
    layer.learnable_stride.requires_grad_(False)
    size = [(n + 2 * padding - kernel) // 2 + 1 for n in shape[2:]]

    def run_layer(x, w, b):
        return torch.func.functional_call(layer, {'weight': w, 'bias': b}, (x, ))

    return {
        'conv2d': lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=padding),
        'op': lambda x, w, b: ls_conv2d(x, w, stride, b, padding, 1, 1, size, phase_tensor),
        'form': lambda x, w, b: ls_conv2d_at_integer_stride(x, w, (2, 2), b, (padding,) * 2,
                                                            (1, 1), 1, size, phase),
        'layer': run_layer,
    }


def measure(kind: str, shape: Shape, device: str, dtype: torch.dtype, repeats: int,
            warmup: int) -> Dict[str, Dict[str, float]]:
    """{method: {'forward': ms, 'forward+backward': ms}}, medians; says which methods do not
    run at ``dtype`` and leaves them out."""
    gen = torch.Generator().manual_seed(0)
    kernel = KINDS[kind][0]
    x = torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(shape[1], shape[1], kernel, kernel, generator=gen) * 0.05).to(
        device, dtype).requires_grad_()
    b = torch.randn(shape[1], generator=gen).to(device, dtype).requires_grad_()
    funcs = {}
    for name, fn in methods(kind, shape, device, dtype).items():
        try:
            fn(x, w, b)
            funcs[name] = fn
        except (TypeError, RuntimeError) as error:  # the op has no bfloat16 on CPU, say
            print(f'{name} skipped for {dtype}: {str(error).splitlines()[0]}')
    grad = torch.randn_like(funcs['conv2d'](x, w, b))
    steps = {
        'forward': lambda f: (lambda: f(x.detach(), w.detach(), b.detach())),
        'forward+backward': lambda f: (lambda: torch.autograd.grad(f(x, w, b), (x, w, b), grad)),
    }
    times = {m: {s: [] for s in steps} for m in funcs}
    with torch.no_grad():
        for name in funcs:
            if name != 'conv2d' and 'form' in funcs:
                torch.testing.assert_close(funcs[name](x, w, b).float(),
                                           funcs['form'](x, w, b).float(), rtol=0.05, atol=0.05)
    for repeat in range(warmup + repeats):
        for step, make in steps.items():
            for name, fn in funcs.items():
                with torch.no_grad() if step == 'forward' else torch.enable_grad():
                    elapsed = elapsed_ms(make(fn), torch.device(device))
                if repeat >= warmup:
                    times[name][step].append(elapsed)
    return {m: {s: statistics.median(v) for s, v in t.items()} for m, t in times.items()}


def shape_of(text: str) -> Shape:
    """A named shape or one written B x C x H x W, e.g. 1x4x12x12."""
    if text in SHAPES:
        return SHAPES[text]
    try:
        batch, channels, height, width = (int(v) for v in text.split('x'))
    except ValueError:
        raise ValueError(f'shape={text!r} expected one of {list(SHAPES)} or BxCxHxW') from None
    return (batch, channels, height, width)

"""Where no compiled kernel serves the device, ls_conv2d computes in pure PyTorch
(ls_conv2d_reference): the same values and gradients as the compiled op for every argument,
and the same errors."""
import pytest
import torch

from mmlstride.ops import ls_conv2d, ls_conv2d_function

F64 = dict(dtype=torch.float64)

# (input, weight, stride, padding, dilation, groups, output_size, phase): every argument away
# from its default, each axis its own value; no sample falls on a whole pixel, where the
# stride's and phase's gradients have a kink (the op takes one side, autograd of the
# interpolation may take the other).
CASES = [
    ((2, 4, 9, 11), (6, 2, 3, 2), (1.5, 0.7071067812), (1, 2), (2, 1), 2, None, (0.25, -0.4142)),
    ((1, 3, 8, 7), (2, 3, 2, 3), (1.3247179572, 2.2360679775), (0, 1), (1, 2), 1, (5, 3), None),
    ((2, 2, 7, 7), (4, 1, 3, 3), (0.6180339887, 1.3247179572), (2, 0), (1, 1), 2, (9, 4),
     (0.95, 0.3)),
]


def tensors(case, seed):
    gen = torch.Generator().manual_seed(seed)
    input_shape, weight_shape, stride, padding, dilation, groups, output_size, phase = case
    x = torch.randn(*input_shape, generator=gen, **F64).requires_grad_()
    w = torch.randn(*weight_shape, generator=gen, **F64).requires_grad_()
    b = torch.randn(weight_shape[0], generator=gen, **F64).requires_grad_()
    s = torch.tensor(stride, **F64, requires_grad=True)
    t = None if phase is None else torch.tensor(phase, **F64, requires_grad=True)
    return [x, w, s, b, padding, dilation, groups, output_size, t]


def values_and_gradients(args):
    out = ls_conv2d(*args)
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    grads = torch.autograd.grad(out, leaves, torch.linspace(-1, 1, out.numel(), **F64)
                                .reshape(out.shape))
    return out, grads


@pytest.mark.parametrize('case', CASES, ids=range(len(CASES)))
def test_fallback_is_the_compiled_op(case, monkeypatch):
    compiled = values_and_gradients(tensors(case, 0))
    used = []
    reference = ls_conv2d_function.ls_conv2d_reference
    monkeypatch.setattr(ls_conv2d_function, 'has_kernel', lambda device: False)
    monkeypatch.setattr(ls_conv2d_function, 'ls_conv2d_reference',
                        lambda *args: used.append(args) or reference(*args))
    fallback = values_and_gradients(tensors(case, 0))
    assert len(used) == 1
    assert fallback[0].shape == compiled[0].shape
    torch.testing.assert_close(fallback[0], compiled[0], rtol=1e-10, atol=1e-10)
    for found, expected in zip(fallback[1], compiled[1]):
        torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('stride', [(0.0, 2.0), (1.5, -1.0), (float('nan'), 1.0)], ids=str)
def test_stride_given_as_numbers_is_checked(stride, monkeypatch):
    """A stride of numbers that are not all > 0 gets the stride's error, with or without
    compiled kernels, not a division by zero or a negative size."""
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r'stride=\(.*\) expected finite values > 0'):
        ls_conv2d(x, w, stride)
    monkeypatch.setattr(ls_conv2d_function, 'has_kernel', lambda device: False)
    with pytest.raises(ValueError, match=r'stride=\(.*\) expected finite values > 0'):
        ls_conv2d(x, w, stride)

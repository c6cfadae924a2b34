"""The compiled op against independent references: values and every gradient, on every device
(``device`` fixture, tests/conftest.py)."""
import dataclasses
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import bitwise_repeatable, require_module

from mmlstride.ops import ls_conv2d, ls_conv2d_reference
from mmlstride.testing import (FRACTIONAL_STRIDES, Case, compiled_errors, compiled_op, errors,
                               evaluate, ls_conv2d_by_deform_conv, ls_conv2d_by_interpolation,
                               float64_reference_errors, onednn_enabled, output_gradient,
                               random_case, relative_error)

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-4}


def assert_same_function(case, reference, tolerance):
    """Same output and same gradients for input, weight, bias and stride."""
    errors = compiled_errors(case, reference)
    assert max(errors.values()) < tolerance, errors


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('seed', range(40))
def test_matches_pure_pytorch(seed, dtype, device):
    case = random_case(seed, dtype, device=device)
    assert_same_function(case, ls_conv2d_reference, TOLERANCE[dtype])


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('seed', range(40))
def test_matches_mmcv_deform_conv(seed, dtype, device):
    deform_conv2d = require_module('mmcv.ops').deform_conv2d
    case = random_case(seed, dtype, device=device)
    assert_same_function(case, partial(ls_conv2d_by_deform_conv, deform_conv2d), TOLERANCE[dtype])


@pytest.mark.parametrize('seed', range(4))
def test_empty_batch(seed, device):
    case = random_case(seed, batch=0, device=device)
    out = ls_conv2d(*case.args())
    assert out.shape == (0, case.weight.shape[0], *case.output_size)
    grads = torch.autograd.grad(out.sum(), case.leaves(), allow_unused=True)
    assert grads[0].shape == case.input.shape
    for grad in grads[1:]:
        assert torch.count_nonzero(grad) == 0


def test_input_without_pixels(device):
    """Zero height: every sample is 0, so the output is the bias and the input, weight and
    stride gradients are 0."""
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 3, 0, 5, **f64)
    w = torch.randn(4, 3, 3, 3, **f64)
    b = torch.randn(4, **f64)
    s = torch.tensor([1.5, 1.5], **f64)
    out = ls_conv2d(x, w, s, b, padding=2, output_size=(2, 3))
    assert torch.equal(out, b.detach().view(1, -1, 1, 1).expand(2, 4, 2, 3))
    grad_x, grad_w, grad_b, grad_s = torch.autograd.grad(out.sum(), (x, w, b, s))
    assert grad_x.shape == x.shape
    assert torch.count_nonzero(grad_w) == 0 and torch.count_nonzero(grad_s) == 0
    assert torch.equal(grad_b, torch.full_like(grad_b, 12.0))


def gradcheck_shrunk(case: Case, device: torch.device) -> bool:
    """gradcheck of ls_conv2d in float64 on ``case`` shrunk (gradcheck is quadratic in the
    number of elements)."""
    case.input = case.input.detach()[:2, :, :7, :7].clone().requires_grad_()
    case.output_size = tuple(min(v, 4) for v in case.output_size)
    # On CUDA the input gradient is summed with atomics, so two backward passes may differ
    # in the last bits (gradcheck's reentrance check).
    nondet_tol = 1e-12 if device.type == 'cuda' else 0.0
    return torch.autograd.gradcheck(lambda *t: ls_conv2d(*t), case.args(), eps=1e-6, atol=1e-7,
                                    nondet_tol=nondet_tol)


@pytest.mark.parametrize('seed', range(8))
def test_gradcheck_float64(seed, device):
    assert gradcheck_shrunk(random_case(seed, device=device), device)


@pytest.mark.parametrize('seed', range(6))
def test_stride_gradient_by_finite_differences(seed, device):
    case = random_case(seed, device=device)
    grad_out = torch.randn(case.input.shape[0], case.weight.shape[0], *case.output_size,
                           dtype=torch.float64, device=device)

    def loss(stride):
        return (ls_conv2d(case.input, case.weight, stride, case.bias, case.padding,
                          case.dilation, case.groups, case.output_size) * grad_out).sum()

    analytic, = torch.autograd.grad(loss(case.stride), case.stride)
    step = 1e-6
    for axis in range(2):
        delta = torch.zeros(2, dtype=torch.float64, device=device)
        delta[axis] = step
        with torch.no_grad():
            numeric = (loss(case.stride + delta) - loss(case.stride - delta)) / (2 * step)
        assert analytic[axis].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('stride', [(1, 1), (2, 2), (1, 2), (3, 1)])
@pytest.mark.parametrize('groups,dilation,padding', [(1, 1, 1), (2, (2, 1), (0, 2))])
def test_integer_stride_is_conv2d(stride, groups, dilation, padding, dtype, device):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 13, 11, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(6, dtype=dtype, device=device, requires_grad=True)
    s = torch.tensor(stride, dtype=dtype, device=device)
    out = ls_conv2d(x, w, s, b, padding, dilation, groups)
    expected = F.conv2d(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), grad_out)
    expected_grads = torch.autograd.grad(expected, (x, w, b), grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


# Strides at which sample points sit exactly on pixels, the kinks of the bilinear interpolant:
# integer strides (where every LSConv2d starts training), and 1.5 / 2.5 / 0.5, which put every
# other output on a pixel. (stride, padding, dilation). No sample of an output a, b > 0 (the
# only ones the stride gradient sees) sits at exactly -1 here.
PIXEL_STRIDES = [((2.0, 2.0), (1, 1), (1, 1)), ((1.0, 1.0), (1, 1), (1, 1)),
                 ((1.0, 2.0), (0, 1), (2, 1)), ((3.0, 2.0), (2, 0), (1, 2)),
                 ((1.5, 1.5), (0, 0), (1, 1)), ((2.5, 0.5), (1, 0), (1, 1))]


def pixel_case(stride, padding, dilation, device, seed=0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    size = (9, 10)
    output_size = tuple(int((size[k] + 2 * padding[k] - 2 * dilation[k] - 1) // stride[k]) + 1
                        for k in range(2))
    case = Case(input=torch.randn(2, 4, *size, generator=gen, dtype=torch.float64),
                weight=torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor(stride, dtype=torch.float64),
                bias=torch.randn(6, generator=gen, dtype=torch.float64), padding=padding,
                dilation=dilation, groups=2, output_size=output_size)
    return case.to(torch.float64, device)


def one_sided_stride_derivative(case: Case, grad_output, side: int, step=1e-6):
    """(L(s + side * step * e_k) - L(s)) / (side * step) per axis, L = <op(s), grad_output>:
    exact up to rounding, because L is linear in each stride on either side of a kink."""
    def loss(stride):
        with torch.no_grad():
            return (compiled_op(*case.args()[:2], stride, *case.args()[3:]) * grad_output).sum()

    base = loss(case.stride.detach())
    return torch.stack([(loss(case.stride.detach() + side * step * torch.eye(
        2, dtype=torch.float64, device=case.stride.device)[k]) - base) / (side * step)
        for k in range(2)])


@pytest.mark.parametrize('stride,padding,dilation', PIXEL_STRIDES,
                         ids=[str(c[0]) for c in PIXEL_STRIDES])
def test_stride_gradient_on_pixels_is_the_derivative_from_the_right(stride, padding,
                                                                      dilation, device):
    """Where samples sit on pixels the stride gradient is the derivative from the right
    (MMCV's get_coordinate_weight, grid_sample): every reference and the right-hand finite
    difference agree, and the left-hand one does not (the case does sit on kinks)."""
    case = pixel_case(stride, padding, dilation, device)
    grad_output = output_gradient(case).to(device)
    for reference in (ls_conv2d_reference, ls_conv2d_by_interpolation,
                      partial(ls_conv2d_by_deform_conv,
                              require_module('mmcv.ops').deform_conv2d)):
        assert_same_function(case, reference, 1e-10)
    analytic = evaluate(compiled_op, case, grad_output)['grad_stride']
    right = one_sided_stride_derivative(case, grad_output, +1)
    left = one_sided_stride_derivative(case, grad_output, -1)
    torch.testing.assert_close(analytic, right, rtol=1e-6, atol=1e-6)
    assert (analytic - left).abs().max() > 1e-2 * analytic.abs().max()


@pytest.mark.parametrize('stride,padding,dilation', PIXEL_STRIDES,
                         ids=[str(c[0]) for c in PIXEL_STRIDES])
def test_float32_gradients_on_pixels_match_float64(stride, padding, dilation):
    """On the CPU the float32 backward gathers along w by windows where float64 takes one
    sample at a time. Where samples sit on pixels (a whole phase too), the neighbour with a
    slope but no weight is gathered all the same: the float32 gradients are float64's (the
    derivative from the right) to float32 rounding."""
    case = dataclasses.replace(pixel_case(stride, padding, dilation, 'cpu'),
                               phase=torch.tensor([1.0, 2.0], dtype=torch.float64))
    case = case.to(torch.float64)
    grad_output = output_gradient(case)
    exact = evaluate(compiled_op, case, grad_output)
    low = evaluate(compiled_op, case.to(torch.float32), grad_output)
    for key in exact:
        assert relative_error(low[key], exact[key]) < 1e-5, key


def test_stride_gradient_at_minus_one_follows_mmcv(device):
    """A sample exactly one pixel before the image (position -1) is outside under MMCV's
    rule, value and derivative 0 there, so the stride gradient is not the right-hand limit at
    such points. Padding 3, stride 2: output 1, tap 0 samples at 2 - 3 = -1."""
    case = pixel_case((2.0, 2.0), (3, 3), (1, 1), device)
    grad_output = output_gradient(case).to(device)
    mmcv_deform_conv = partial(ls_conv2d_by_deform_conv,
                               require_module('mmcv.ops').deform_conv2d)
    for reference in (ls_conv2d_by_interpolation, mmcv_deform_conv):
        assert_same_function(case, reference, 1e-10)
    analytic = evaluate(compiled_op, case, grad_output)['grad_stride']
    right = one_sided_stride_derivative(case, grad_output, +1)
    assert (analytic - right).abs().max() > 1e-2 * analytic.abs().max()


def test_seed_notebook_example(device):
    """The hand-worked example of docs/op.md ("Independent references"): its data, with the
    factor a (b) of the chain rule through a * s in the stride gradient."""
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.tensor([[10., 2, 3], [0, 1, 2], [30, 5, 2]], **f64).view(1, 1, 3, 3)
    w = torch.tensor([[0.4, 0.2], [0.1, 0.9]], **f64).view(1, 1, 2, 2)
    stride = torch.tensor([2.4, 2.2], **f64, requires_grad=True)
    y = ls_conv2d(x, w, stride, output_size=(2, 2))
    torch.testing.assert_close(y.detach().view(2, 2),
                               torch.tensor([[5.3, 1.12], [7.8, 0.384]], **f64))
    expected = {(0, 0): (0.0, 0.0), (0, 1): (0.0, -1.4), (1, 1): (-0.64, -0.48)}
    for (a, b), grad in expected.items():
        got, = torch.autograd.grad(y[0, 0, a, b], stride, retain_graph=True)
        torch.testing.assert_close(got, torch.tensor(grad, **f64))


@pytest.mark.parametrize('stride_dtype', [torch.float32, torch.float64])
def test_stride_keeps_its_own_dtype(stride_dtype, device):
    """A float32 stride (as under autocast) with float64 data: same function, gradient in
    the stride's dtype."""
    mixed = random_case(3, device=device).to(torch.float64, device, stride_dtype=stride_dtype)
    same_values = mixed.to(torch.float64, device)  # the stride converted exactly
    got = evaluate(compiled_op, mixed, output_gradient(mixed))
    expected = evaluate(ls_conv2d_reference, same_values, output_gradient(mixed))
    assert got['grad_stride'].dtype == stride_dtype
    # Only the stride gradient is rounded, to float32 or not at all.
    assert max(errors(got, expected).values()) < (1e-7 if stride_dtype == torch.float32
                                                  else 1e-12)


def test_default_output_size_follows_the_stride():
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    # floor((10 + 2 - 2 - 1) / s) + 1
    assert ls_conv2d(x, w, (2.0, 0.75), padding=1).shape[2:] == (5, 13)
    assert ls_conv2d(x, w, (FRACTIONAL_STRIDES[-1], 1.0), padding=1).shape[2:] == (3, 10)
    # A stride given as numbers sizes the output as given, not as the float32 tensor made of
    # it: 3 / 0.3 and 11 / 1.1 are 10, in float32 9.99...
    x, w = torch.randn(1, 1, 4, 12), torch.randn(1, 1, 1, 1)
    assert ls_conv2d(x, w, (0.3, 1.1)).shape[2:] == (11, 11)


@pytest.mark.parametrize(
    'shape, stride',
    [
        # 16 channels, 3x3 taps, 141 columns in float64: 162 KB of columns per output row,
        # so tiles of 25 rows of the CPU's 4 MiB target (206 rows of CUDA's 32 MiB), which
        # split images and straddle them.
        ((3, 16, 141, 141), (0.9871, 1.0137)),
        # 64 channels, 3x3 taps, 1300 columns: one output row (6 MB) exceeds the CPU's
        # target, so tiles of one row (of 5 rows on CUDA, whole images).
        ((2, 64, 5, 1300), (1.0137, 0.9871)),
        # 64 channels, 3x3 taps, 8000 columns: one output row (37 MB) exceeds either target.
        ((1, 64, 3, 8000), (1.0137, 0.9871)),
    ],
    ids=['rows-of-several-images', 'rows-wider-than-a-cpu-tile', 'rows-wider-than-any-tile'])
def test_batch_split_into_tiles(shape, stride, device):
    """Output rows processed in several column tiles give the reference's results."""
    gen = torch.Generator().manual_seed(0)
    case = Case(input=torch.randn(*shape, generator=gen, dtype=torch.float64),
                weight=torch.randn(4, shape[1], 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor(stride, dtype=torch.float64), bias=None, padding=(1, 1),
                dilation=(1, 1), groups=1, output_size=shape[2:]).to(torch.float64, device)
    errors = compiled_errors(case, ls_conv2d_reference)
    assert max(errors.values()) < 1e-10, errors


def forward_kernels(case: Case) -> set:
    """The CPU sampling kernels, and oneDNN's matmul if used, that the compiled forward of
    ``case`` calls."""
    from torch.profiler import profile
    with torch.no_grad(), profile() as prof:
        compiled_op(*case.args())
    return {e.name for e in prof.events()} & {
        'mmlstride::forward_bands', 'mmlstride::im2col', 'mkldnn::_linear_pointwise'}


@pytest.mark.parametrize('dtype,onednn', [(torch.float64, True), (torch.float32, True),
                                          (torch.float32, False)])
@pytest.mark.parametrize('seed', range(12))
def test_both_cpu_forward_layouts_match_the_reference(seed, dtype, onednn):
    """The CPU forward runs by bands of output rows, each sampled and multiplied in one thread,
    where the weight is no larger than the input, and by tiles with one multi-threaded GEMM
    where it is larger: both give the reference's output and gradients, on the same random cases made
    to take one or the other (the batch repeated, or each group's filters). float32 products
    go through oneDNN's matmul, or ATen's (MKL) with torch.backends.mkldnn disabled."""
    case = random_case(seed, torch.float64)
    repeats = -(-case.weight.numel() // case.input.numel())
    by_bands = dataclasses.replace(case, input=case.input.detach().repeat(repeats, 1, 1, 1))
    group_filters = case.weight.detach().unflatten(0, (case.groups, -1))
    repeats = case.input.numel() // case.weight.numel() + 1
    by_tiles = dataclasses.replace(case, 
        weight=group_filters.repeat(1, repeats, 1, 1, 1).flatten(0, 1),
        bias=None if case.bias is None else case.bias.detach().unflatten(
            0, (case.groups, -1)).repeat(1, repeats).flatten())
    # The tiles' float32 products go through oneDNN's matmul where enabled; each band's
    # through ATen's (MKL), which writes the output's rows in place.
    products = {'mkldnn::_linear_pointwise'} if dtype == torch.float32 and onednn else set()
    with onednn_enabled(onednn):
        for forced, kernels in ((by_bands, {'mmlstride::forward_bands'}),
                                (by_tiles, {'mmlstride::im2col'} | products)):
            forced = forced.to(dtype)
            assert forward_kernels(forced) == kernels
            assert_same_function(forced, ls_conv2d_reference, TOLERANCE[dtype])


@pytest.mark.parametrize('onednn', [True, False], ids=['micro-kernel', 'mkl'])
@pytest.mark.parametrize('groups,bias', [(1, True), (2, True), (2, False)])
def test_cpu_forward_bands_sum_every_block_of_their_products(groups, bias, onednn):
    """The float32 bands multiply by oneDNN's micro-kernel in blocks of 64 output columns and
    576 reduction rows, or by ATen's GEMM with torch.backends.mkldnn disabled: either way every
    block and tail is added once, with each group's bias. Here a group reduces over 630 rows
    (70 channels x 9 taps: a block and a tail of 54) and a band has 323 columns (5 blocks, the
    last of 3)."""
    gen = torch.Generator().manual_seed(groups)
    channels = 70 * groups
    case = Case(input=torch.randn(2, channels, 32, 40, generator=gen, dtype=torch.float64),
                weight=torch.randn(6 * groups, 70, 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor([1.7, 2.3], dtype=torch.float64),
                bias=torch.randn(6 * groups, generator=gen, dtype=torch.float64) if bias else None,
                padding=(1, 1), dilation=(1, 1), groups=groups, output_size=(19, 17))
    with onednn_enabled(onednn):
        low = case.to(torch.float32)
        assert forward_kernels(low) == {'mmlstride::forward_bands'}
        with torch.no_grad():
            actual = compiled_op(*low.args()).double()
    with torch.no_grad():
        expected = ls_conv2d_reference(*low.to(torch.float64).args())
    assert relative_error(actual, expected) < 1e-6


@pytest.mark.parametrize('onednn', [True, False], ids=['micro-kernel', 'mkl'])
@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('batch,height,output_height', [(2, 32, 19), (1, 170, 100)],
                         ids=['tile-copied', 'tiles-in-place'])
def test_cpu_columns_gradient_covers_every_block(batch, height, output_height, groups, onednn):
    """The float32 backward's columns gradient wᵀ · dy runs by oneDNN's micro-kernel in blocks
    of 128 rows by 256 columns, in parallel, or by ATen's batched product with
    torch.backends.mkldnn disabled: the input and stride gradients built on it match the
    float64 reference either way. A group has 630 rows (4 blocks and a tail of 118); dy is a
    copied tile of 646 columns spanning both images (2 blocks and a tail of 134), or read in
    place from one image's rows (97 and then 3 of them a tile)."""
    from torch.profiler import profile
    gen = torch.Generator().manual_seed(groups)
    case = Case(input=torch.randn(batch, 70 * groups, height, 40, generator=gen,
                                  dtype=torch.float64),
                weight=torch.randn(6 * groups, 70, 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor([1.7, 2.3], dtype=torch.float64), bias=None,
                padding=(1, 1), dilation=(1, 1), groups=groups,
                output_size=(output_height, 17))
    with onednn_enabled(onednn), profile() as prof:
        errors = float64_reference_errors(case, torch.float32, 'cpu')
    assert max(errors.values()) < 1e-5, errors
    micro_kernel = onednn and micro_kernel_in_this_torch()
    assert ('aten::bmm' in {e.name for e in prof.events()}) != micro_kernel


def micro_kernel_in_this_torch() -> bool:
    """Whether the extension was built with oneDNN's float32 micro-kernel (torch's headers
    declare ``cpublas::brgemm`` for float32) and runs it here (x86-64 with AVX2)."""
    import platform
    from torch.utils.cpp_extension import include_paths
    header = next(Path(p, 'ATen', 'native', 'CPUBlas.h') for p in include_paths()
                  if Path(p, 'ATen', 'native', 'CPUBlas.h').exists())
    return ('CPUBLAS_BRGEMM_F32F32F32' in header.read_text()
            and platform.machine() in ('x86_64', 'AMD64')
            and torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512'))


def forward_kernels_of(input, weight, stride) -> set:
    from torch.profiler import profile
    with torch.no_grad(), profile() as prof:
        ls_conv2d(input, weight, stride, padding=1)
    return {e.name for e in prof.events()} & {'mmlstride::forward_bands', 'mmlstride::im2col'}


def test_cpu_forward_after_larger_and_smaller_calls():
    """The CPU forward by bands keeps its scratch from call to call: a call after a larger one
    (whose buffers it reuses) and after a smaller one (which it grows) computes what the
    first call of that shape did."""
    sizes = [(1, 4, 9, 8), (3, 4, 40, 37), (2, 4, 13, 21)]
    inputs = [torch.randn(size) for size in sizes]
    weight, stride = torch.randn(6, 4, 3, 3), torch.tensor([1.7, 2.3])
    first = [ls_conv2d(x, weight, stride, padding=1) for x in inputs]
    for x, expected in zip(reversed(inputs), reversed(first)):
        assert torch.equal(ls_conv2d(x, weight, stride, padding=1), expected)
        assert forward_kernels_of(x, weight, stride) == {'mmlstride::forward_bands'}


def test_cpu_is_bitwise_deterministic_across_runs_and_threads():
    """On the CPU every output and gradient repeats bit for bit, whatever the thread count
    (README: determinism), with both forward layouts (a weight smaller or larger than the
    input) and both float32 products (oneDNN's, ATen's)."""
    gen = torch.Generator().manual_seed(0)
    by_bands = Case(input=torch.randn(4, 16, 40, 37, generator=gen),
                       weight=torch.randn(24, 8, 3, 3, generator=gen),
                       stride=torch.tensor([1.73, 2.21]), bias=torch.randn(24, generator=gen),
                       padding=(1, 1), dilation=(1, 2), groups=2, output_size=(20, 17))
    by_tiles = Case(input=torch.randn(2, 96, 9, 11, generator=gen),
                         weight=torch.randn(160, 48, 3, 3, generator=gen),
                         stride=torch.tensor([1.37, 0.81]),
                         bias=torch.randn(160, generator=gen), padding=(1, 0),
                         dilation=(1, 1), groups=2, output_size=(6, 12))
    for case, kernel in ((by_bands, 'mmlstride::forward_bands'),
                         (by_tiles, 'mmlstride::im2col')):
        case = case.to(torch.float32)
        grad_output = output_gradient(case, torch.float32)
        for onednn in (True, False):
            with onednn_enabled(onednn):
                assert kernel in forward_kernels(case)
                threads = torch.get_num_threads()
                results = []
                try:
                    for count in (1, 2, 3, 1):
                        torch.set_num_threads(count)
                        results.append(evaluate(compiled_op, case, grad_output))
                finally:
                    torch.set_num_threads(threads)
            for result in results[1:]:
                for name, value in result.items():
                    assert torch.equal(value, results[0][name]), (name, kernel, onednn)


# The CPU forward interpolates along w 16 samples at a time from a 32-value window of an
# input row (AVX-512 permutes, where ATen runs at AVX-512) or one at a time elsewhere. Cases
# at the windows' edges: rows narrower than one or two vector loads (16, 32 values), samples
# so far apart that a window holds one or two of them, so close that 16 fill one, and
# samples (partly) outside the image at either end.
WINDOW_CASES = {
    'narrow-row': ((2, 3, 9, 7), (0.7, 0.45), (1, 1), (1, 1), (0.0, 0.0)),
    'one-load-row': ((1, 4, 12, 16), (1.3, 0.8), (1, 2), (1, 1), (0.0, -0.3)),
    'two-load-row': ((1, 4, 10, 33), (1.1, 1.9), (0, 1), (1, 2), (0.2, 0.5)),
    'one-sample-per-window': ((1, 2, 8, 300), (1.0, 37.3), (1, 1), (1, 1), (0.0, 0.0)),
    'two-samples-per-window': ((1, 2, 8, 200), (1.0, 14.7), (1, 1), (1, 3), (0.0, 0.4)),
    'dense-windows': ((1, 3, 8, 70), (1.5, 0.31), (1, 3), (1, 1), (0.0, 0.1)),
    'outside-left': ((1, 3, 9, 50), (1.2, 1.7), (1, 9), (1, 1), (0.0, -20.5)),
    'outside-right': ((1, 3, 9, 50), (1.2, 2.6), (1, 4), (1, 2), (0.3, 31.25)),
    'detection-like': ((1, 8, 40, 200), (1.9, 2.1), (1, 1), (1, 1), (0.5, 0.5)),
}


def window_case(name: str) -> Case:
    shape, stride, padding, dilation, phase = WINDOW_CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    out_w = int((shape[3] + 2 * padding[1] - 1 - 2 * dilation[1]) / stride[1]) + 1
    out_h = int((shape[2] + 2 * padding[0] - 1 - 2 * dilation[0]) / stride[0]) + 1
    return Case(input=torch.randn(*shape, generator=gen, dtype=torch.float64),
                weight=torch.randn(4, shape[1], 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor(stride, dtype=torch.float64),
                bias=torch.randn(4, generator=gen, dtype=torch.float64), padding=padding,
                dilation=dilation, groups=1, output_size=(out_h, out_w),
                phase=torch.tensor(phase, dtype=torch.float64))


@pytest.mark.parametrize('name', list(WINDOW_CASES))
def test_cpu_forward_at_the_edges_of_its_windows(name):
    """The float32 CPU forward (both layouts) equals the float64 reference where the
    interpolation along w meets the edges of its windows."""
    case = window_case(name)
    expected = ls_conv2d_reference(*case.args())
    repeats = case.input.numel() // case.weight.numel() + 1  # a weight larger than the input
    many_filters = dataclasses.replace(case, weight=case.weight.repeat(repeats, 1, 1, 1),
                                       bias=case.bias.repeat(repeats))
    for forced, kernel in ((case, 'mmlstride::forward_bands'),
                           (many_filters, 'mmlstride::im2col')):
        forced = forced.to(torch.float32)
        assert kernel in forward_kernels(forced)
        with torch.no_grad():
            out = compiled_op(*forced.args())
        reference = expected.repeat(1, out.shape[1] // expected.shape[1], 1, 1)
        assert (out.double() - reference).abs().max() < 2e-5 * reference.abs().max(), name


@pytest.mark.parametrize('name', list(WINDOW_CASES))
def test_cpu_backward_at_the_edges_of_its_windows(name):
    """The float32 CPU backward, whose gather along w takes the forward's windows (with the
    neighbours that have a slope but no weight), gives every gradient of the float64 reference
    (input, weight, bias, stride and phase) where that gather meets the edges of its windows.
    The phase is moved off whole pixels, where the op's phase gradient is the derivative from
    the right and the reference's another (test_phase_gradient_on_pixels_is_...)."""
    case = window_case(name)
    case = dataclasses.replace(case, phase=case.phase + torch.tensor([0.013, 0.007],
                                                                     dtype=torch.float64))
    errors = float64_reference_errors(case, torch.float32, 'cpu')
    assert max(errors.values()) < 2e-5, (name, errors)


WINDOWLESS_CHECK = '''
import sys
import torch
sys.path.insert(0, sys.argv[1])
from test_oracles import WINDOW_CASES, window_case
from mmlstride.testing import compiled_op
print(torch.backends.cpu.get_cpu_capability())
with torch.no_grad():
    outputs = {name: compiled_op(*window_case(name).to(torch.float32).args())
               for name in WINDOW_CASES}
torch.save(outputs, sys.argv[2])
'''


def test_cpu_forward_without_avx512_matches_the_windows(tmp_path):
    """With ATen held to AVX2 (ATEN_CPU_CAPABILITY=avx2), the forward interpolates one sample
    at a time: it gives the float64 reference's output, and that of this process's windows
    to float32 rounding."""
    environment = dict(os.environ, ATEN_CPU_CAPABILITY='avx2')
    result = subprocess.run(
        [sys.executable, '-c', WINDOWLESS_CHECK, os.path.dirname(__file__),
         str(tmp_path / 'out.pt')], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'AVX512' not in result.stdout
    outputs = torch.load(tmp_path / 'out.pt')
    for name in WINDOW_CASES:
        case = window_case(name)
        with torch.no_grad():
            here = compiled_op(*case.to(torch.float32).args())
        expected = ls_conv2d_reference(*case.args())
        assert (outputs[name].double() - expected).abs().max() < 2e-5 * expected.abs().max(), name
        assert torch.allclose(outputs[name], here, rtol=1e-5, atol=1e-5), name


GEMM_AS_CONVOLUTION_CHECK = '''
import torch
from torch.profiler import profile
from mmlstride.testing import Case, float64_reference_errors, random_case

cases = [random_case(seed) for seed in range(12)]
gen = torch.Generator().manual_seed(0)  # several tiles, bias, groups
cases.append(Case(input=torch.randn(2, 64, 60, 200, generator=gen, dtype=torch.float64),
                  weight=torch.randn(32, 32, 3, 3, generator=gen, dtype=torch.float64),
                  stride=torch.tensor([1.9, 2.1], dtype=torch.float64),
                  bias=torch.randn(32, generator=gen, dtype=torch.float64), padding=(1, 1),
                  dilation=(1, 1), groups=2, output_size=(30, 100)))
print(max(max(float64_reference_errors(case, torch.float32, 'cpu').values()) for case in cases))
with profile() as prof:
    case = cases[-1].to(torch.float32)
    out = torch.ops.mmlstride.ls_conv2d(case.input, case.weight, case.stride, case.bias,
                                        case.padding, case.dilation, case.groups, case.output_size)
    out.sum().backward()
print(sorted({event.name for event in prof.events() if event.name.startswith('aten::conv')}))
'''


@pytest.mark.parametrize('forced', [True, False], ids=['convolution', 'bmm'])
def test_float32_gemms_as_1x1_convolutions(forced):
    """The float32 GEMMs that CUDA runs as 1x1 convolutions (so that they follow cuDNN's TF32
    rule, as F.conv2d does) compute the op, gradients included, when the CPU is made to take
    that path too (MMLSTRIDE_GEMM_AS_CONVOLUTION=1); by default the CPU multiplies
    matrices."""
    environment = dict(os.environ, MMLSTRIDE_GEMM_AS_CONVOLUTION='1' if forced else '0')
    result = subprocess.run([sys.executable, '-c', GEMM_AS_CONVOLUTION_CHECK], env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    worst, convolutions = result.stdout.strip().splitlines()
    assert float(worst) < 1e-4
    if forced:
        assert 'aten::convolution' in convolutions and 'aten::convolution_backward' in convolutions
    else:
        assert convolutions == '[]'


# The phase t (a translation of the sampling grid, a * s + t - p + i * d): an independent
# input of the op with its own gradient.


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('seed', range(24))
def test_phase_matches_every_reference(seed, dtype, device):
    """Output and every gradient, the phase's included, against the pure-PyTorch op, the
    definition's interpolation matrices and mmcv's DCN with the offsets moved by t."""
    case = random_case(seed, dtype, device=device, phase=True)
    for reference in (ls_conv2d_reference, ls_conv2d_by_interpolation,
                      partial(ls_conv2d_by_deform_conv, require_module('mmcv.ops').deform_conv2d)):
        assert_same_function(case, reference, TOLERANCE[dtype])


@pytest.mark.parametrize('far', [(-1.5, 0.3), (-0.7, -0.4), (0.6, 1.3)], ids=str)
@pytest.mark.parametrize('seed', range(4))
def test_phases_that_move_rows_outside_the_image(seed, far, device):
    """Phases of about the image's size: whole rows or columns of outputs sample outside (or
    partly outside) the image, the paths where a row's reach is empty or clipped."""
    case = random_case(seed, device=device, phase=True)
    height, width = case.input.shape[2:]
    case.phase = torch.tensor((far[0] * height, far[1] * width), dtype=torch.float64,
                              device=device, requires_grad=True)
    assert_same_function(case, ls_conv2d_by_interpolation, TOLERANCE[torch.float64])


@pytest.mark.parametrize('seed', range(4))
def test_phase_gradient_alone(seed, device):
    """The phase's gradient with nothing else requiring one equals the one computed with every
    gradient (the backward's mask keeps the shared reduction)."""
    case = random_case(seed, device=device, phase=True)
    grad_output = output_gradient(case).to(device)
    every = evaluate(compiled_op, case, grad_output)['grad_phase']
    expected = evaluate(ls_conv2d_by_interpolation, case, grad_output)['grad_phase']
    for leaf in (case.input, case.weight, case.bias, case.stride):
        if leaf is not None:
            leaf.requires_grad_(False)
    out = compiled_op(*case.args())
    alone, = torch.autograd.grad(out, case.phase, grad_output.to(out.dtype))
    assert torch.equal(alone, every)
    torch.testing.assert_close(alone, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('seed', range(6))
def test_frozen_phase(seed, device):
    """A phase that learns nothing (no gradient asked for, the backward skips its sums) still
    moves the samples the other gradients see: they equal those computed with the phase's
    gradient, and the reference's."""
    case = random_case(seed, device=device, phase=True)
    grad_output = output_gradient(case).to(device)
    expected = evaluate(ls_conv2d_by_interpolation, case, grad_output)
    with bitwise_repeatable(device):
        with_phase = evaluate(compiled_op, case, grad_output)
        case.phase.requires_grad_(False)
        out = compiled_op(*case.args())
        leaves = {'grad_' + name: t for name, t in (('input', case.input), ('weight', case.weight),
                                                    ('bias', case.bias), ('stride', case.stride))
                  if t is not None}
        frozen = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()),
                                                      grad_output.to(out.dtype))), output=out)
    for name, value in frozen.items():
        torch.testing.assert_close(value, with_phase[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(value, expected[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize('seed', range(6))
def test_gradcheck_float64_with_phase(seed, device):
    assert gradcheck_shrunk(random_case(seed, device=device, phase=True), device)


@pytest.mark.parametrize('seed', range(6))
def test_phase_gradient_by_finite_differences(seed, device):
    case = random_case(seed, device=device, phase=True)
    grad_out = output_gradient(case).to(device)

    def loss(phase):
        return (compiled_op(*case.args()[:-1], phase) * grad_out).sum()

    analytic, = torch.autograd.grad(loss(case.phase), case.phase)
    step = 1e-6
    for axis in range(2):
        delta = torch.zeros(2, dtype=torch.float64, device=device)
        delta[axis] = step
        with torch.no_grad():
            numeric = (loss(case.phase + delta) - loss(case.phase - delta)) / (2 * step)
        assert analytic[axis].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize('seed', range(6))
def test_zero_phase_is_no_phase(seed, device):
    """A zero phase samples where no phase does, bit for bit (the stride's gradient too); its
    own gradient is the stride's reduction without the output index factor."""
    case = random_case(seed, device=device)
    grad_output = output_gradient(case).to(device)
    zero = dataclasses.replace(case, phase=torch.zeros(2, dtype=torch.float64, device=device,
                                                       requires_grad=True))
    with bitwise_repeatable(device):
        without = evaluate(compiled_op, case, grad_output)
        with_zero = evaluate(compiled_op, zero, grad_output)
    for name, value in without.items():
        assert torch.equal(with_zero[name], value), name
    expected = evaluate(ls_conv2d_by_interpolation, zero, grad_output)['grad_phase']
    torch.testing.assert_close(with_zero['grad_phase'], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shift', [(1, 1), (2, 0), (0, 3)])
def test_integer_phase_is_less_padding(shift, device):
    """Sampling at a * s + t - p with an integer t is sampling with padding p - t: the same
    output and input, weight and stride gradients."""
    case = random_case(5, device=device)
    case.padding = (3, 3)
    grad_output = output_gradient(case).to(device)
    shifted = dataclasses.replace(case, phase=torch.tensor(shift, dtype=torch.float64,
                                                           device=device, requires_grad=True))
    less_padding = dataclasses.replace(case, padding=(3 - shift[0], 3 - shift[1]))
    got = evaluate(compiled_op, shifted, grad_output)
    expected = evaluate(compiled_op, less_padding, grad_output)
    assert max(errors(got, expected).values()) < 1e-12


def one_sided_phase_derivative(case: Case, grad_output, side: int, step=1e-6):
    """(L(t + side * step * e_k) - L(t)) / (side * step) per axis, L = <op(t), grad_output>."""
    def loss(phase):
        with torch.no_grad():
            return (compiled_op(*case.args()[:-1], phase) * grad_output).sum()

    unit = torch.eye(2, dtype=torch.float64, device=case.phase.device)
    base = loss(case.phase.detach())
    return torch.stack([(loss(case.phase.detach() + side * step * unit[k]) - base) / (side * step)
                        for k in range(2)])


@pytest.mark.parametrize('phase', [(2.0, 1.0), (0.5, 1.0)], ids=str)
@pytest.mark.parametrize('stride,padding,dilation', PIXEL_STRIDES[:4],
                         ids=[str(c[0]) for c in PIXEL_STRIDES[:4]])
def test_phase_gradient_on_pixels_is_the_derivative_from_the_right(stride, padding, dilation,
                                                                     phase, device):
    """Integer strides with an integer phase put every sample on a pixel (a half-pixel one,
    those of one axis): the phase gradient is the derivative from the right, as the stride's
    is, and the references agree. (These phases keep every sample off -1, where MMCV's rule
    gives 0: next test.)"""
    case = dataclasses.replace(pixel_case(stride, padding, dilation, device),
                               phase=torch.tensor(phase, dtype=torch.float64, device=device,
                                                  requires_grad=True))
    grad_output = output_gradient(case).to(device)
    for reference in (ls_conv2d_reference, ls_conv2d_by_interpolation):
        assert_same_function(case, reference, 1e-10)
    analytic = evaluate(compiled_op, case, grad_output)['grad_phase']
    right = one_sided_phase_derivative(case, grad_output, +1)
    left = one_sided_phase_derivative(case, grad_output, -1)
    torch.testing.assert_close(analytic, right, rtol=1e-6, atol=1e-6)
    kinks = [k for k in range(2) if phase[k] == int(phase[k])]  # the axes on pixels
    assert all((analytic[k] - left[k]).abs() > 1e-2 * analytic.abs().max() for k in kinks)


def test_phase_gradient_at_minus_one_follows_mmcv(device):
    """A phase of -1 with padding 1 puts output 0's first tap at exactly -1, outside under
    MMCV's rule (value and derivative 0): the phase gradient follows mmcv's DCN and the
    definition's matrices, not grid_sample's right-hand limit."""
    case = dataclasses.replace(pixel_case((2.0, 2.0), (1, 1), (1, 1), device),
                               phase=torch.tensor((-1.0, -1.0), dtype=torch.float64,
                                                  device=device, requires_grad=True))
    grad_output = output_gradient(case).to(device)
    mmcv_deform_conv = partial(ls_conv2d_by_deform_conv,
                               require_module('mmcv.ops').deform_conv2d)
    for reference in (ls_conv2d_by_interpolation, mmcv_deform_conv):
        assert_same_function(case, reference, 1e-10)
    analytic = evaluate(compiled_op, case, grad_output)['grad_phase']
    right = one_sided_phase_derivative(case, grad_output, +1)
    assert (analytic - right).abs().max() > 1e-2 * analytic.abs().max()


def test_phase_keeps_its_own_dtype(device):
    """A float32 phase with float64 data: the gradient comes back in float32."""
    case = random_case(2, device=device, phase=True)
    case.phase = case.phase.detach().float().requires_grad_()
    got = evaluate(compiled_op, case, output_gradient(case).to(device))
    assert got['grad_phase'].dtype == torch.float32


def test_reference_takes_a_stride_in_another_dtype():
    """The pure-PyTorch implementation samples in the input's dtype whatever the stride's."""
    x, w = torch.randn(1, 2, 9, 10), torch.randn(3, 2, 3, 3)
    stride = torch.tensor([1.7, 2.2], dtype=torch.float64)
    out = ls_conv2d_reference(x, w, stride, None, (1, 1), (1, 1), 1, (5, 5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ls_conv2d_reference(x, w, stride.float(), None, (1, 1), (1, 1),
                                                        1, (5, 5)))

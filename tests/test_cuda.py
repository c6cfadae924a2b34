"""CUDA-only behaviour: parity with the CPU kernels, float16/bfloat16 against a float64
reference, determinism, 64-bit indexing, device checks. The shared oracle tests, gradcheck,
opcheck and torch.compile run on CUDA through the ``device`` fixture (tests/conftest.py).
Skipped without a GPU."""
import re

import pytest
import torch

from conftest import CUDA_AVAILABLE, require_cuda_kernels
from mmlstride.ops import LSConv2d, ls_conv2d
from mmlstride.testing import (compiled_op, errors, evaluate, float64_reference_errors,
                               output_gradient, random_case)

pytestmark = pytest.mark.skipif(not CUDA_AVAILABLE, reason='no CUDA device')

# Worst norm-relative error ||op - ref|| / ||ref|| allowed against the float64 reference
# (output and every gradient). float16 and bfloat16 round the columns, the output and the
# returned gradients to 11 and 8 significant bits (relative 4.9e-4 and 3.9e-3 per element):
# about ten times that. The sums run in float32; the stride gradient, a sum that cancels
# heavily, is the least accurate in float32 (as on the CPU: README's accuracy table).
LOW_PRECISION_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def cuda_kernels():
    require_cuda_kernels()


@pytest.mark.parametrize('dtype,tolerance', [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize('seed', range(20))
def test_matches_cpu_kernels(seed, dtype, tolerance):
    case = random_case(seed, dtype)
    grad_output = output_gradient(case)
    on_cpu = evaluate(compiled_op, case, grad_output)
    on_cuda = evaluate(compiled_op, case.to(dtype, 'cuda', stride_dtype=dtype), grad_output)
    found = errors(on_cuda, on_cpu)
    assert max(found.values()) < tolerance, found


@pytest.mark.parametrize('dtype', list(LOW_PRECISION_TOLERANCE))
@pytest.mark.parametrize('seed', range(20))
def test_against_float64_reference(seed, dtype):
    found = float64_reference_errors(random_case(seed), dtype, 'cuda')
    assert max(found.values()) < LOW_PRECISION_TOLERANCE[dtype], found


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_opcheck_low_precision(dtype):
    case = random_case(2).to(dtype, 'cuda')
    args = (case.input, case.weight, case.bias, case.stride, case.padding, case.dilation,
            case.groups, case.output_size)
    torch.library.opcheck(torch.ops.mmlstride.ls_conv2d.default, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_aot_dispatch_static'))


def backward_grads(case, grad_output):
    out = compiled_op(*case.args())
    leaves = [t for t in case.leaves() if t.requires_grad]
    return torch.autograd.grad(out, leaves, grad_output.to(out.dtype).to(out.device))


@pytest.fixture
def deterministic():
    saved = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def backward_kernel_names(case, grad_output):
    """Names of the CUDA kernels one backward pass launches."""
    from torch.profiler import ProfilerActivity, profile
    out = compiled_op(*case.args())
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.autograd.grad(out, [t for t in case.leaves() if t.requires_grad],
                            grad_output.to(out.dtype).to(out.device))
        torch.cuda.synchronize()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize('needs', ['input', 'input+weight', 'input+stride', 'all'])
def test_deterministic_mode_gathers_the_input_gradient(deterministic, needs):
    """The atomic scatter of the input gradient (the backward kernel with kInput = true)
    runs by default, and never under deterministic mode, where the gather runs instead."""
    case = random_case(6).to(torch.float32, 'cuda')
    for name, leaf in (('weight', case.weight), ('stride', case.stride), ('bias', case.bias)):
        if leaf is not None:
            leaf.requires_grad_(needs == 'all' or name in needs)
    grad_output = output_gradient(case)
    scatter = re.compile(r'ls_conv_backward_kernel<[^,]+, [^,]+, true')
    default = backward_kernel_names(case, grad_output)
    assert any(scatter.search(name) for name in default), default
    assert not any('ls_conv_input_gradient_kernel' in name for name in default), default
    torch.use_deterministic_algorithms(True)
    deterministic_names = backward_kernel_names(case, grad_output)
    assert not any(scatter.search(name) for name in deterministic_names), deterministic_names
    assert any('ls_conv_input_gradient_kernel' in name for name in deterministic_names)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('seed', range(4))
def test_deterministic_mode_repeats_bit_for_bit(deterministic, seed, dtype):
    """Under deterministic mode the input gradient is gathered (no atomics): every gradient
    repeats bit for bit and agrees with the atomic scatter's."""
    case = random_case(seed).to(dtype, 'cuda')
    grad_output = output_gradient(case)
    scattered = backward_grads(case, grad_output)
    torch.use_deterministic_algorithms(True)
    first = backward_grads(case, grad_output)
    for _ in range(3):
        for a, b in zip(first, backward_grads(case, grad_output)):
            assert torch.equal(a, b)
    for a, b in zip(first, scattered):
        torch.testing.assert_close(a, b)


def test_deterministic_mode_on_large_tiles(deterministic):
    """The gather on a batch of several tiles that split images, against the scatter."""
    gen = torch.Generator().manual_seed(0)
    # 32 channels, 3x3 taps, 82 columns in float32: 94 KB of columns per output row, so
    # tiles of 355 rows of CUDA's 32 MiB target, over 4 images of 142 rows.
    x = torch.randn(4, 32, 141, 141, generator=gen).cuda().requires_grad_()
    w = torch.randn(8, 32, 3, 3, generator=gen).cuda().requires_grad_()
    stride = torch.tensor([0.9871, 1.7137], device='cuda', requires_grad=True)
    out = ls_conv2d(x, w, stride, padding=1)
    grad_output = torch.randn_like(out)
    scattered = torch.autograd.grad(out, (x, w, stride), grad_output)
    torch.use_deterministic_algorithms(True)
    out = ls_conv2d(x, w, stride, padding=1)
    gathered = torch.autograd.grad(out, (x, w, stride), grad_output)
    for a, b in zip(gathered, scattered):
        torch.testing.assert_close(a, b)


def test_device_mismatch_names_the_argument():
    x = torch.randn(1, 2, 8, 8, device='cuda')
    w = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match='weight.device=cpu expected cuda:0'):
        ls_conv2d(x, w, (1.5, 1.5))
    with pytest.raises(RuntimeError, match='weight.device=cpu expected cuda:0'):
        torch.ops.mmlstride.ls_conv2d(x, w, None, torch.tensor([1.5, 1.5], device='cuda'),
                                      (0, 0), (1, 1), 1, (4, 4))


def test_layer_on_cuda_learns_its_stride():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1).cuda()
    x = torch.randn(2, 3, 16, 16, device='cuda')
    layer(x).square().sum().backward()
    assert layer.learnable_stride.grad is not None
    assert layer.learnable_stride.grad.device.type == 'cuda'
    assert torch.isfinite(layer.learnable_stride.grad).all()


@pytest.mark.skipif(CUDA_AVAILABLE and torch.cuda.get_device_properties(0).total_memory < 40e9,
                    reason='needs 40 GB of GPU memory')
def test_more_elements_than_int32_indexes():
    """An input of more than 2**31 elements takes the 64-bit index path: a 1x1 kernel of ones at
    stride 1 copies every element, the last ones included, forward and backward."""
    x = torch.randn(1, 2, 32768, 32769, device='cuda', dtype=torch.float16)
    assert x.numel() > 2**31
    x.requires_grad_()
    w = torch.ones(2, 1, 1, 1, device='cuda', dtype=torch.float16)
    stride = torch.tensor([1.0, 1.0], device='cuda')
    out = torch.ops.mmlstride.ls_conv2d(x, w, None, stride, (0, 0), (1, 1), 2, x.shape[2:])
    assert torch.equal(out, x)
    del out
    grad_output = torch.randn_like(x)
    grad_input, = torch.autograd.grad(
        torch.ops.mmlstride.ls_conv2d(x, w, None, stride, (0, 0), (1, 1), 2, x.shape[2:]), x,
        grad_output)
    assert torch.equal(grad_input, grad_output)

"""CUDA-only behaviour: parity with the CPU kernels, float16/bfloat16 against a float64
reference, determinism, 64-bit indexing, device checks, CUDA graphs (captured, and through
torch.compile's reduce-overhead mode), no host syncs, the TF32 rule, a second GPU. The shared
oracle tests, gradcheck, opcheck and torch.compile run on CUDA through the ``device`` fixture
(tests/conftest.py). Skipped without a GPU."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CUDA_AVAILABLE, needs_torch_for, require_cuda_kernels
from mmlstride.ops import LSConv2d, ls_conv2d
from mmlstride.testing import (compiled_op, errors, evaluate, float64_reference_errors,
                               output_gradient, random_case, relative_error)

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


@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('dtype,tolerance', [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize('seed', range(20))
def test_matches_cpu_kernels(seed, dtype, tolerance, phase):
    case = random_case(seed, dtype, phase=phase)
    grad_output = output_gradient(case)
    on_cpu = evaluate(compiled_op, case, grad_output)
    on_cuda = evaluate(compiled_op, case.to(dtype, 'cuda', stride_dtype=dtype), grad_output)
    found = errors(on_cuda, on_cpu)
    assert max(found.values()) < tolerance, found


@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('dtype', list(LOW_PRECISION_TOLERANCE))
@pytest.mark.parametrize('seed', range(20))
def test_against_float64_reference(seed, dtype, phase):
    found = float64_reference_errors(random_case(seed, phase=phase), dtype, 'cuda')
    assert max(found.values()) < LOW_PRECISION_TOLERANCE[dtype], found


@needs_torch_for('torch.library.opcheck')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_opcheck_low_precision(dtype):
    case = random_case(2).to(dtype, 'cuda')
    torch.library.opcheck(torch.ops.mmlstride.ls_conv2d.default, case.args()[:8],
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


@pytest.mark.parametrize('learned', [True, False], ids=['learned', 'frozen'])
def test_phase_sums_only_for_a_learned_phase(learned):
    """The backward kernel reduces the phase's gradient (kPhase, its fifth template argument)
    only when the phase requires one; the stride's is reduced either way."""
    case = random_case(7, phase=True).to(torch.float32, 'cuda')
    case.phase.requires_grad_(learned)
    names = backward_kernel_names(case, output_gradient(case))
    variants = {m.group(1) for name in names
                for m in [re.search(r'ls_conv_backward_kernel<[^,]+, [^,]+, \w+, (\w+, \w+)', name)]
                if m}
    assert variants == {'true, true' if learned else 'true, false'}, names


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
    """The gather on tiles that split images (the rows each reaches found on the device),
    against the scatter."""
    gen = torch.Generator().manual_seed(0)
    # 64 channels, 3x3 taps, 233 columns in float32: 537 KB of columns per output row, so
    # tiles of 62 rows of CUDA's 32 MiB target, 7 per image of 405 rows.
    x = torch.randn(2, 64, 400, 400, generator=gen).cuda().requires_grad_()
    w = torch.randn(8, 64, 3, 3, generator=gen).cuda().requires_grad_()
    stride = torch.tensor([0.9871, 1.7137], device='cuda', requires_grad=True)
    out = ls_conv2d(x, w, stride, padding=1)
    grad_output = torch.randn_like(out)
    scattered = torch.autograd.grad(out, (x, w, stride), grad_output)
    torch.use_deterministic_algorithms(True)
    out = ls_conv2d(x, w, stride, padding=1)
    gathered = torch.autograd.grad(out, (x, w, stride), grad_output)
    # The input gradient alone: deterministic mode also picks other cuDNN algorithms for the
    # products, whose rounding moves the weight's and the stride's gradients (the stride's
    # sum cancels heavily), as seen on an H200; those are checked against float64 elsewhere.
    torch.testing.assert_close(gathered[0], scattered[0], rtol=1e-5, atol=1e-5)


def test_device_mismatch_names_the_argument():
    x = torch.randn(1, 2, 8, 8, device='cuda')
    w = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match='weight.device=cpu expected cuda:0'):
        ls_conv2d(x, w, (1.5, 1.5))
    with pytest.raises(ValueError, match='weight.device=cpu expected cuda:0'):
        torch.ops.mmlstride.ls_conv2d(x, w, torch.tensor([1.5, 1.5], device='cuda'), None,
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
    out = torch.ops.mmlstride.ls_conv2d(x, w, stride, None, (0, 0), (1, 1), 2, x.shape[2:])
    assert torch.equal(out, x)
    del out
    grad_output = torch.randn_like(x)
    grad_input, = torch.autograd.grad(
        torch.ops.mmlstride.ls_conv2d(x, w, stride, None, (0, 0), (1, 1), 2, x.shape[2:]), x,
        grad_output)
    assert torch.equal(grad_input, grad_output)


# A layer of stride 2 on a (2, 8, 20, 24) input: a (2, 16, 10, 12) output. Float32 results are
# compared at 1e-5: tests/conftest.py's full_precision_float32 turns TF32 off for every test.
LAYER_ARGS = dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1)
INPUT_SHAPE, OUTPUT_SHAPE = (2, 8, 20, 24), (2, 16, 10, 12)


def forward_and_grads(model: nn.Module, input: torch.Tensor, grad_output: torch.Tensor):
    """model(input), then the gradients of sum(output * grad_output) in input (which
    requires grad) and in each of the model's parameters."""
    output = model(input)
    return (output, *torch.autograd.grad(output, (input, *model.parameters()), grad_output))


def assert_all_close(actual, expected):
    """Each tensor of ``actual`` equals its counterpart in ``expected`` to 1e-5."""
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cuda_graph_replays_forward_and_backward_with_new_input_and_stride():
    """Guards CUDA graph capture of the layer's forward and backward (no host sync, the
    stride read on the device): a replay after new input data and a new stride is copied in
    place gives the eager output and gradients for that input and stride."""
    torch.manual_seed(0)
    layer = LSConv2d(**LAYER_ARGS).cuda()
    static_input = torch.randn(INPUT_SHAPE, device='cuda', requires_grad=True)
    grad_output = torch.randn(OUTPUT_SHAPE, device='cuda')
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward_and_grads(layer, static_input, grad_output)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_results = forward_and_grads(layer, static_input, grad_output)
    with torch.no_grad():
        static_input.copy_(torch.randn(INPUT_SHAPE, device='cuda'))
        layer.learnable_stride.copy_(torch.tensor([1.7, 2.3]))
    graph.replay()
    assert_all_close(static_results, forward_and_grads(layer, static_input, grad_output))


def compiled_step(model: nn.Module, compiled: nn.Module, stride) -> None:
    """Sets the model's stride, then checks one compiled forward and backward against eager
    on a new input."""
    with torch.no_grad():
        model[0].learnable_stride.copy_(torch.tensor(stride))
    input = torch.randn(INPUT_SHAPE, device='cuda', requires_grad=True)
    grad_output = torch.randn(OUTPUT_SHAPE, device='cuda')
    assert_all_close(forward_and_grads(compiled, input, grad_output),
                     forward_and_grads(model, input, grad_output))


def test_compile_reduce_overhead_matches_eager_and_follows_the_stride():
    """Guards torch.compile(mode='reduce-overhead') (CUDA graphs) on a model holding LSConv2d:
    each step's forward and backward match eager, and a stride changed in place between
    calls is the one used (no value frozen at capture). The first calls warm up and record;
    the later ones replay, each with another stride."""
    torch.manual_seed(0)
    model = nn.Sequential(LSConv2d(**LAYER_ARGS), nn.ReLU()).cuda()
    compiled = torch.compile(model, mode='reduce-overhead')
    for stride in [(2.0, 2.0), (1.7, 2.3), (2.4, 1.6), (1.9, 2.2), (2.0, 2.0)]:
        compiled_step(model, compiled, stride)


def test_no_host_sync_in_forward_and_backward():
    """Guards against device-to-host reads (of the stride, say) in the forward and backward
    of the layer and of the functional op given output_size: they run under
    torch.cuda.set_sync_debug_mode('error'). A first run outside the mode does the one-time
    initialisation."""
    layer = LSConv2d(**LAYER_ARGS).cuda()
    input = torch.randn(INPUT_SHAPE, device='cuda', requires_grad=True)
    grad_output = torch.randn(OUTPUT_SHAPE, device='cuda')
    stride = torch.tensor([1.7, 2.3], device='cuda', requires_grad=True)

    def layer_and_functional():
        forward_and_grads(layer, input, grad_output)
        output = ls_conv2d(input, layer.weight, stride, layer.bias, padding=1,
                           output_size=OUTPUT_SHAPE[2:])
        torch.autograd.grad(output, (input, layer.weight, layer.bias, stride), grad_output)

    layer_and_functional()
    torch.cuda.set_sync_debug_mode('error')
    try:
        layer_and_functional()
    finally:
        torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('cudnn_tf32,matmul_tf32', [(True, False), (False, True)])
def test_float32_gemms_follow_cudnn_allow_tf32(cudnn_tf32, matmul_tf32):
    """Guards the TF32 rule: LSConv's float32 GEMMs use TF32 when
    torch.backends.cudnn.allow_tf32 says so, like F.conv2d, whatever
    torch.backends.cuda.matmul.allow_tf32 says. At stride 1 with 256 * 3 * 3 products per
    output, TF32 errs above 1e-5 relative to a float64 run (about as much as F.conv2d's),
    float32 below. tests/conftest.py's full_precision_float32 restores both flags."""
    torch.manual_seed(0)
    layer = LSConv2d(256, 256, 3, stride=1, padding=1).cuda()
    input = torch.randn(2, 256, 32, 32, device='cuda')
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    with torch.no_grad():
        reference = copy.deepcopy(layer).double()(input.double())
        lsconv_error = relative_error(layer(input), reference)
        conv2d_error = relative_error(F.conv2d(input, layer.weight, layer.bias, padding=1),
                                      reference)
    if cudnn_tf32:
        assert lsconv_error > 1e-5, (lsconv_error, conv2d_error)
        assert conv2d_error / 10 < lsconv_error < conv2d_error * 10, (lsconv_error, conv2d_error)
    else:
        assert lsconv_error < 1e-5, (lsconv_error, conv2d_error)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_layer_on_the_second_gpu_while_the_first_is_current():
    """Guards the device guard: a layer and input on cuda:1, run while cuda:0 is the current
    device, give their output and gradients on cuda:1, equal to the same run on cuda:0."""
    torch.manual_seed(0)
    layer = LSConv2d(**LAYER_ARGS)
    input, grad_output = torch.randn(INPUT_SHAPE), torch.randn(OUTPUT_SHAPE)
    with torch.cuda.device(0):
        results = {device: forward_and_grads(copy.deepcopy(layer).to(device),
                                             input.to(device).requires_grad_(),
                                             grad_output.to(device))
                   for device in ('cuda:0', 'cuda:1')}
        assert torch.cuda.current_device() == 0
    assert all(t.device == torch.device('cuda:1') for t in results['cuda:1'])
    assert_all_close([t.cpu() for t in results['cuda:1']], [t.cpu() for t in results['cuda:0']])


@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_fused_products_on_calls_of_many_tiles(dtype, groups):
    """The fused sampling GEMMs (float16, bfloat16 from sm_80, float64) over several tiles of
    output channels, pixels and reduction steps, each with a partial last tile, against the
    float64 reference: the output and every gradient."""
    from test_cuda_fused_emulated import large_case
    tolerance = {torch.float64: 1e-10, **LOW_PRECISION_TOLERANCE}[dtype]
    for phase in (False, True):
        found = float64_reference_errors(large_case(groups, groups, phase), dtype, 'cuda')
        assert max(found.values()) < tolerance, (phase, found)


def launched_kernels(function):
    """The names of the CUDA kernels ``function`` launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        function()
        torch.cuda.synchronize()
    return {event.name for event in profile.events()}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64, torch.float32])
def test_fused_products_take_the_forward_and_weight_gradient(dtype):
    """float16, bfloat16 (from compute capability 8.0) and float64 run the forward and the weight
    gradient by the fused sampling GEMMs, with no im2col; float32 keeps the columns and cuDNN's
    products. A weight gradient alone launches no sampling pass over columns."""
    from test_cuda_fused_emulated import large_case
    fused = dtype != torch.float32 and (
        dtype != torch.bfloat16 or torch.cuda.get_device_capability()[0] >= 8)
    case = large_case(0).to(dtype, 'cuda')
    output = ls_conv2d(*case.args())
    names = launched_kernels(lambda: ls_conv2d(*case.args()))
    assert any('forward_fused_kernel' in name for name in names) == fused, names
    assert any('im2col_kernel' in name for name in names) != fused, names
    names = launched_kernels(lambda: torch.autograd.grad(output, case.weight,
                                                         torch.ones_like(output),
                                                         retain_graph=True))
    assert any('weight_gradient_fused_kernel' in name for name in names) == fused, names
    if fused:
        assert not any('im2col_kernel' in name or 'backward_kernel' in name
                       for name in names), names

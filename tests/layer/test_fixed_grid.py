"""Fixed grids: a whole stride and a constant phase that need no gradient run as pooling and a
plain convolution (PyTorch's own ops) instead of the sampling op, with the same values and
gradients, in training and inference; a stride or phase that learns runs the op."""
import random

import pytest
import torch
from torch import nn

from conftest import CUDA_AVAILABLE, needs_torch_for, require_cuda_kernels
from mmlstride.ops import LSConv2d, ls_conv2d
from mmlstride.ops import ls_conv2d_function
from mmlstride.ops.ls_conv2d_export import ls_conv2d_at_integer_stride
from mmlstride.testing import relative_error


def grid_cases(count: int, seed: int = 0):
    """Random per-axis geometries: kernels 1-3, strides 1-3, dilations 1-4 (multiples of the
    stride included, where the blend runs strided), paddings 0-2, phases with whole parts -1
    to 1 and fractions 0, 1/2 or other, odd and even sizes, own and given output sizes."""
    rng = random.Random(seed)
    for _ in range(count):
        kernel = [rng.choice([1, 2, 3]) for _ in range(2)]
        stride = [rng.choice([1, 2, 3]) for _ in range(2)]
        dilation = [rng.choice([1, 2, 3, 4]) for _ in range(2)]
        padding = [rng.choice([0, 1, 2]) for _ in range(2)]
        fraction = rng.choice([(0.0, 0.0), (0.5, 0.5), (0.5, 0.0), (0.25, 0.75), (0.0, 0.3)])
        phase = tuple(rng.choice([-1, 0, 0, 1]) + f for f in fraction)
        size = [d * (k - 1) + 1 + rng.randrange(0, 9) for k, d in zip(kernel, dilation)]
        groups = rng.choice([1, 2])
        own = [(size[k] + 2 * padding[k] - dilation[k] * (kernel[k] - 1) - 1) // stride[k] + 1
               for k in range(2)]
        output_size = rng.choice([None, tuple(own),
                                  tuple(max(1, n + rng.choice([-1, 1, 2])) for n in own)])
        yield dict(kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                   phase=phase, size=size, groups=groups, output_size=output_size)


def case_tensors(case, seed):
    gen = torch.Generator().manual_seed(seed)
    channels = 2 * case['groups']
    x = torch.randn(2, channels, *case['size'], generator=gen, dtype=torch.float64)
    w = torch.randn(4, channels // case['groups'], *case['kernel'], generator=gen,
                    dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize('block', range(4))
def test_fixed_grid_form_is_the_op_values_and_gradients(block):
    """The pooling-and-convolution form equals the op in float64, values and the input,
    weight and bias gradients, over 200 random geometries."""
    for index, case in enumerate(grid_cases(50, seed=block)):
        x, w, b = case_tensors(case, seed=index)
        args = (b, tuple(case['padding']), tuple(case['dilation']), case['groups'],
                case['output_size'])
        found = ls_conv2d_at_integer_stride(x, w, tuple(case['stride']), *args,
                                            phase=case['phase'])
        stride = torch.tensor(case['stride'], dtype=torch.float64)
        phase = torch.tensor(case['phase'], dtype=torch.float64)
        expected = torch.ops.mmlstride.ls_conv2d(x, w, stride, b, args[1], args[2], args[3],
                                                 found.shape[2:], phase)
        assert found.shape == expected.shape, case
        assert relative_error(found, expected) < 1e-12, case
        grad = torch.randn_like(found)
        for got, want in zip(torch.autograd.grad(found, (x, w, b), grad),
                             torch.autograd.grad(expected, (x, w, b), grad)):
            assert relative_error(got, want) < 1e-12, case


@pytest.fixture
def form_calls(monkeypatch):
    """The strides ls_conv2d ran the pooling-and-convolution form with, the form chosen for
    every fixed grid as on CUDA (on CPU a fractional phase keeps the op, which is faster
    there: test_on_cpu_a_fractional_phase_keeps_the_op)."""
    monkeypatch.setattr(ls_conv2d_function, '_form_is_faster', lambda device, phase: True)
    calls = []
    original = ls_conv2d_function.ls_conv2d_at_integer_stride

    def counted(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(ls_conv2d_function, 'ls_conv2d_at_integer_stride', counted)
    return calls


LAYERS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(2, 1), groups=2),
    dict(kernel_size=3, stride=2, padding=1, dilation=2),
]
GRIDS = [dict(), dict(phase=0.5), dict(phase=(0.25, -1.5)), dict(pivot='centre'),
         dict(pivot='centre', phase=0.5), dict(learn_phase=True, initial_phase=(0.5, -0.75))]


def layer_pair(spec, grid, stride=None, dtype=torch.float64):
    """A layer whose grid needs no gradient and the same layer whose grid learns."""
    torch.manual_seed(0)
    frozen = LSConv2d(4, 6, **spec, **grid, dtype=dtype)
    learning = LSConv2d(4, 6, **spec, **grid, dtype=dtype)
    learning.load_state_dict(frozen.state_dict())
    for layer in (frozen, learning):
        if stride is not None:
            with torch.no_grad():
                layer.learnable_stride.copy_(torch.tensor(stride))
    frozen.learnable_stride.requires_grad_(False)
    if frozen.learnable_phase is not None:
        frozen.learnable_phase.requires_grad_(False)
    return frozen, learning


@pytest.mark.parametrize('grid', GRIDS, ids=str)
@pytest.mark.parametrize('spec', LAYERS, ids=str)
def test_layer_with_a_fixed_grid_computes_what_the_op_does(spec, grid, form_calls, device):
    """Frozen at the nominal stride, and at another whole stride (the output keeps the nominal
    size), a layer runs the form and matches the learning layer (the op) in float64: outputs
    and input, weight and bias gradients, at odd and even sizes, on each device."""
    for stride in (None, (3.0, 1.0)):
        frozen, learning = [layer.to(device) for layer in layer_pair(spec, grid, stride)]
        for size in ((13, 10), (16, 17)):
            x = torch.randn(2, 4, *size, dtype=torch.float64, device=device, requires_grad=True)
            calls = len(form_calls)
            found, expected = frozen(x), learning(x)
            assert len(form_calls) == calls + 1  # the learning layer ran the op
            assert found.shape == expected.shape
            assert relative_error(found, expected) < 1e-12
            grad = torch.randn_like(found)
            wanted = torch.autograd.grad(expected, (x, learning.weight, learning.bias), grad)
            got = torch.autograd.grad(found, (x, frozen.weight, frozen.bias), grad)
            for a, b in zip(got, wanted):
                assert relative_error(a, b) < 1e-12


def test_a_fractional_or_learning_grid_runs_the_op(form_calls):
    """A fractional frozen stride, a learning stride and a learning phase take the op."""
    x = torch.randn(1, 4, 12, 12)
    fractional, _ = layer_pair(LAYERS[0], {}, stride=(1.5, 2.0), dtype=torch.float32)
    fractional(x)
    learning = LSConv2d(4, 6, 3, stride=2, padding=1)
    learning(x)
    phase = LSConv2d(4, 6, 3, stride=2, padding=1, learn_phase=True)
    phase.learnable_stride.requires_grad_(False)
    phase(x)
    assert form_calls == []
    with torch.no_grad():  # a stride that requires grad keeps the op without grad mode too
        learning(x)
    assert form_calls == []


def test_on_cpu_a_fractional_phase_keeps_the_op(monkeypatch):
    """On CPU a frozen whole stride runs the form (a plain convolution) without a fractional
    phase and the op with one; both compute what the learning layer does."""
    calls = []
    original = ls_conv2d_function.ls_conv2d_at_integer_stride
    monkeypatch.setattr(ls_conv2d_function, 'ls_conv2d_at_integer_stride',
                        lambda *a, **k: calls.append(a[-1]) or original(*a, **k))
    x = torch.randn(1, 4, 13, 12, dtype=torch.float64)
    for grid, runs_form in ((dict(), True), (dict(pivot='centre'), True),
                            (dict(phase=(1.0, -2.0)), True), (dict(phase=0.5), False),
                            (dict(phase=(0.0, 0.25)), False)):
        frozen, learning = layer_pair(LAYERS[0], grid)
        calls.clear()
        assert relative_error(frozen(x), learning(x)) < 1e-12
        assert len(calls) == int(runs_form), grid


def test_follower_runs_the_form_on_its_leaders_fixed_grid(form_calls):
    torch.manual_seed(0)
    leader = LSConv2d(4, 6, 3, stride=2, padding=1, phase=0.5)
    follower = LSConv2d(4, 6, 1, stride=2)
    follower.follow_stride(leader)
    x = torch.randn(1, 4, 11, 14)
    learning = follower(x)
    assert form_calls == []
    leader.learnable_stride.requires_grad_(False)
    torch.testing.assert_close(follower(x), learning, rtol=1e-5, atol=1e-6)
    assert form_calls == [(2, 2)]


def train(model, frozen_steps, steps=6):
    """SGD steps on a two-layer model whose strides freeze during ``frozen_steps`` and learn
    otherwise, at a learning rate of 0 so that they stay whole; the parameters after every
    step."""
    strides = [layer.learnable_stride for layer in model]
    others = [p for p in model.parameters() if all(p is not s for s in strides)]
    optimizer = torch.optim.SGD([dict(params=others), dict(params=strides, lr=0.0)], lr=0.05)
    gen = torch.Generator().manual_seed(1)
    history = []
    for step in range(steps):
        for stride in strides:
            stride.requires_grad_(step not in frozen_steps)
        x = torch.randn(2, 3, 17, 16, generator=gen, dtype=torch.float64)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        if step not in frozen_steps:
            assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in strides)
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def two_layers():
    torch.manual_seed(0)
    return nn.Sequential(LSConv2d(3, 4, 3, stride=2, padding=1, phase=0.5, dtype=torch.float64),
                         LSConv2d(4, 2, 3, stride=2, padding=1, dtype=torch.float64))


def test_freezing_and_unfreezing_within_a_training_run(form_calls, monkeypatch):
    """Strides learn for two steps (the op, gradients reach them), freeze for two (the form)
    and learn again (the op): every parameter after every step equals a run that never
    leaves the op."""
    found = train(two_layers(), frozen_steps=(2, 3))
    assert len(form_calls) == 4  # two layers, two frozen steps
    monkeypatch.setattr(LSConv2d, '_fixed_grid', lambda self, size: None)
    expected = train(two_layers(), frozen_steps=(2, 3))
    for step, (a, b) in enumerate(zip(found, expected)):
        for p, q in zip(a, b):
            assert relative_error(p, q) < 1e-10, step


def test_state_dict_is_the_same_and_a_loaded_stride_is_seen():
    """The form leaves the state dict as it was, and a stride written through the parameter
    (load_state_dict, copy_ under no_grad) is the one the next call samples with."""
    frozen, learning = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    keys = frozen.state_dict().keys()
    x = torch.randn(1, 4, 12, 12)
    frozen(x)
    assert frozen.state_dict().keys() == keys == learning.state_dict().keys()
    state = learning.state_dict()
    state['learnable_stride'] = torch.tensor([1.5, 2.5])
    for layer in (frozen, learning):
        layer.load_state_dict(state)
    torch.testing.assert_close(frozen(x), learning(x))
    with torch.no_grad():
        for layer in (frozen, learning):
            layer.learnable_stride.copy_(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(frozen(x), learning(x))
    frozen.double()
    learning.double()
    torch.testing.assert_close(frozen(x.double()), learning(x.double()))


@pytest.mark.parametrize('grid', [dict(), dict(phase=0.5)], ids=str)
def test_channels_last_and_cpu_autocast(grid, form_calls):
    """Channels-last input gives the same values; under CPU autocast the form runs in float32
    as the op does."""
    frozen, learning = layer_pair(LAYERS[0], grid, dtype=torch.float32)
    x = torch.randn(2, 4, 15, 14)
    expected = learning(x)
    torch.testing.assert_close(frozen(x.contiguous(memory_format=torch.channels_last)),
                               expected, rtol=1e-5, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = frozen(x.bfloat16())
        wanted = learning(x.bfloat16())
    assert out.dtype == wanted.dtype == torch.float32
    torch.testing.assert_close(out, wanted, rtol=1e-5, atol=1e-6)
    assert len(form_calls) == 2


@pytest.mark.skipif(not CUDA_AVAILABLE, reason='no CUDA device')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_in_the_autocast_dtype(dtype):
    require_cuda_kernels()
    frozen, learning = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    frozen, learning = frozen.cuda(), learning.cuda()
    x = torch.randn(2, 4, 33, 30, device='cuda')
    with torch.autocast('cuda', dtype=dtype):
        out, wanted = frozen(x), learning(x)
    assert out.dtype == wanted.dtype == dtype
    torch.testing.assert_close(out.float(), wanted.float(), rtol=3e-2, atol=3e-2)


def compiled_with_targets(module: nn.Module, **options):
    """``module`` under torch.compile, run eagerly, and the list that collects the targets of
    every node of the graphs it captures once called."""
    targets = []

    def eager(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    return torch.compile(module, backend=eager, **options), targets


@needs_torch_for('torch.compile with fullgraph=True')
def test_compile_and_export_keep_the_op_and_its_values():
    """Graphs being captured keep the op (the stride's value is not read there): compiled and
    exported layers with a fixed grid compute the eager outputs."""
    frozen, _ = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    x = torch.randn(2, 4, 16, 16)
    expected = frozen(x)
    compiled, targets = compiled_with_targets(frozen, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6)
    assert any('mmlstride.ls_conv2d' in target for target in targets), targets
    program = torch.export.export(frozen, (x, ))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)


def test_cpu_autocast_keeps_float64_and_a_given_output_size(form_calls):
    """Under CPU autocast a float64 call on a fixed grid stays in float64, as the op's does,
    and keeps the output size it is given."""
    x = torch.randn(2, 4, 15, 14, dtype=torch.float64)
    w, b = torch.randn(6, 4, 3, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    grid = torch.tensor([2.0, 2.0], dtype=torch.float64)
    phase = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ls_conv2d(x, w, (2, 2), b, padding=1, output_size=(6, 5), phase=(0.5, 0.5))
        wanted = ls_conv2d(x, w, grid, b, padding=1, output_size=(6, 5), phase=phase)
    assert out.dtype == wanted.dtype == torch.float64 and out.shape == (2, 6, 6, 5)
    torch.testing.assert_close(out, wanted, rtol=1e-12, atol=1e-12)
    assert len(form_calls) == 1


def test_fixed_grid_is_read_from_the_device_once_until_it_changes(form_calls):
    """A frozen grid's values are read (a host copy) on the first call and after an in-place
    change of the stride, not on every call."""
    frozen, _ = layer_pair(LAYERS[0], {}, dtype=torch.float32)
    reads = []
    sampling_stride = frozen.sampling_stride
    frozen.sampling_stride = lambda: reads.append(1) or sampling_stride()
    x = torch.randn(1, 4, 12, 12)
    frozen(x)
    frozen(x)
    assert len(reads) == 1 and len(form_calls) == 2
    with torch.no_grad():
        frozen.learnable_stride.copy_(torch.tensor([3.0, 1.0]))
    frozen(x)
    frozen(x)
    assert len(reads) == 2 and len(form_calls) == 4


def test_meta_and_traced_layers_keep_the_op(form_calls):
    """On the meta device (shapes only, nothing to read) and under torch.jit.trace, a frozen
    whole-stride layer keeps the op: a meta output of the right shape, and a traced graph that
    calls mmlstride::ls_conv2d."""
    frozen, _ = layer_pair(LAYERS[0], {}, dtype=torch.float32)
    meta = layer_pair(LAYERS[0], {}, dtype=torch.float32)[0].to('meta')
    out = meta(torch.empty(2, 4, 12, 12, device='meta'))
    assert out.device.type == 'meta' and out.shape == frozen(torch.randn(2, 4, 12, 12)).shape
    calls = len(form_calls)
    traced = torch.jit.trace(frozen, torch.randn(1, 4, 12, 12), check_trace=False)
    assert len(form_calls) == calls
    assert 'mmlstride::ls_conv2d' in str(traced.graph)


def test_concrete_sizes_pad_only_the_rows_read(form_calls):
    """With concrete sizes the form is given the output size, and pads only the rows the
    output reads: a frozen ResNet strided 3 x 3 at a half phase is one average pool and one
    convolution (the convolution's own size, for symbolic sizes, pads a row and a column
    more)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    frozen, _ = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    x = torch.randn(1, 4, 8, 8)
    frozen(x)  # reads the grid: the trace below has the layer's computation alone
    graph = make_fx(frozen)(x).graph
    operators = [str(node.target).split('.')[1] for node in graph.nodes
                 if node.op == 'call_function']  # less the stride and phase made tensors
    assert [name for name in operators if name != 'lift_fresh_copy'] == \
        ['avg_pool2d', 'convolution'] and len(form_calls) == 2


def test_a_traced_layer_reads_its_stride_parameter(form_calls):
    """torch.jit.trace of a frozen layer records the stride as the parameter it is, not its
    value at the time: a stride written into the parameter later is the one the traced module
    samples with."""
    frozen, _ = layer_pair(LAYERS[0], {}, dtype=torch.float64)
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64)
    traced = torch.jit.trace(frozen, x, check_trace=False)
    with torch.no_grad():
        frozen.learnable_stride.copy_(torch.tensor([2.5, 1.5]))
    assert relative_error(traced(x), frozen(x)) < 1e-12


@needs_torch_for('torch.export with dynamic shapes')
def test_an_exported_layer_keeps_the_op(form_calls):
    """torch.export of a frozen whole-stride layer records the op on the stride parameter,
    with the eager values."""
    frozen, _ = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    x = torch.randn(2, 4, 16, 16)
    program = torch.export.export(frozen, (x, ))
    operators = [str(node.target) for node in program.graph.nodes if node.op == 'call_function']
    assert 'mmlstride.ls_conv2d.default' in operators, operators
    torch.testing.assert_close(program.module()(x), frozen(x), rtol=1e-5, atol=1e-6)


@needs_torch_for('torch.compile with fullgraph=True')
def test_compiled_layer_keeps_the_op(form_calls):
    """torch.compile (graph breaks allowed, as models compile) records the op for a frozen
    whole-stride layer, in the graph it captures, never the form's pooling and convolution."""
    frozen, _ = layer_pair(LAYERS[0], dict(phase=0.5), dtype=torch.float32)
    x = torch.randn(2, 4, 16, 16)
    expected = frozen(x)
    calls = len(form_calls)
    torch._dynamo.reset()
    compiled, targets = compiled_with_targets(frozen)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6)
    assert any('mmlstride.ls_conv2d' in target for target in targets), targets
    assert len(form_calls) == calls

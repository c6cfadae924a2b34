"""The ops as torch.library ops: opcheck (schema, fake, autograd registration) and torch.compile,
on every device (``device`` fixture, tests/conftest.py)."""
import pytest
import torch
from torch import nn

from conftest import needs_torch_for
from mmlstride.testing import random_case
from mmlstride.ops import LSConv2d


OPCHECK = needs_torch_for('torch.library.opcheck')


@OPCHECK
@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('seed', range(3))
def test_opcheck_forward(seed, phase, device):
    case = random_case(seed, device=device, phase=phase)
    torch.library.opcheck(torch.ops.mmlstride.ls_conv2d.default, case.args())


@OPCHECK
@pytest.mark.parametrize('phase,output_mask', [
    (False, [True] * 4 + [False]), (False, [False, True, True, False, False]),
    (False, [True, False, False, True, False]), (True, [True] * 5),
    (True, [False, False, False, False, True]), (True, [True, True, False, True, False])])
def test_opcheck_backward(phase, output_mask, device):
    case = random_case(1, device=device, phase=phase)
    grad_output = torch.randn(case.input.shape[0], case.weight.shape[0], *case.output_size,
                              dtype=torch.float64, device=device)
    args = (grad_output, case.input.detach(), case.weight.detach(), case.stride.detach(),
            case.phase.detach() if phase else None, case.padding, case.dilation, case.groups,
            output_mask)
    torch.library.opcheck(torch.ops.mmlstride.ls_conv2d_backward.default, args)


def small_net(device, **grid):
    torch.manual_seed(0)
    return nn.Sequential(
        LSConv2d(3, 8, 3, stride=2, padding=1, **grid), nn.ReLU(),
        LSConv2d(8, 8, 3, stride=2, padding=1, groups=2, **grid), nn.ReLU(),
        LSConv2d(8, 4, 1, stride=1, **grid)).double().to(device)


@needs_torch_for('torch.compile with fullgraph=True')
@pytest.mark.parametrize('backend,dynamic,grid', [
    ('aot_eager', True, {}), ('inductor', False, {}),
    ('aot_eager', True, dict(pivot='centre', learn_phase=True))],
    ids=['aot_eager-dynamic', 'inductor', 'aot_eager-dynamic-centre-phase'])
def test_torch_compile_fullgraph(backend, dynamic, grid, device):
    net = small_net(device, **grid)
    with torch.no_grad():
        for module in net:
            if isinstance(module, LSConv2d):
                module.learnable_stride.add_(
                    torch.tensor([0.137, -0.219], dtype=torch.float64, device=device))
                if module.learnable_phase is not None:
                    module.learnable_phase.add_(
                        torch.tensor([0.31, -0.42], dtype=torch.float64, device=device))
    compiled = torch.compile(net, backend=backend, fullgraph=True, dynamic=dynamic)
    for size in (17, 23):
        x = torch.randn(2, 3, size, size + 2, dtype=torch.float64, device=device)
        expected = net(x)
        expected_grads = torch.autograd.grad(expected.square().sum(), list(net.parameters()))
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
        torch.testing.assert_close(out, expected)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad)

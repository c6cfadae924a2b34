"""LSConv2d as an nn.Conv2d drop-in and as the registered 'LSConv' layer."""
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require_module
from mmlstride.ops import LSConv2d, ls_conv2d, switch_to_deploy
from mmlstride.ops.ls_conv2d_layer import _BoundedStride

CONV_CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 1), stride=(1, 2), padding=(1, 0)),
    dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=2, dilation=2, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=1, stride=2, bias=False),
]


@pytest.mark.parametrize('config', CONV_CONFIGS)
def test_starts_as_conv2d(config):
    torch.manual_seed(0)
    layer = LSConv2d(**config)
    conv = nn.Conv2d(**config)
    conv.load_state_dict(layer.state_dict(), strict=False)
    assert layer.stride == conv.stride and layer.padding == conv.padding
    assert layer.dilation == conv.dilation
    assert layer.learnable_stride.tolist() == [float(s) for s in conv.stride]
    x = torch.randn(2, 4, 15, 12)
    torch.testing.assert_close(layer(x), conv(x))


def test_same_parameters_and_initialisation_as_conv2d():
    torch.manual_seed(0)
    layer = LSConv2d(8, 16, 3, stride=2, padding=1)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    torch.testing.assert_close(layer.weight, conv.weight)
    torch.testing.assert_close(layer.bias, conv.bias)
    assert [name for name, _ in layer.named_parameters()] == ['weight', 'bias', 'learnable_stride']
    assert set(layer.state_dict()) == {'weight', 'bias', 'learnable_stride'}


def test_output_size_stays_nominal_when_the_stride_moves():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([1.3, 2.9]))
    x = torch.randn(1, 3, 20, 17)
    out = layer(x)
    assert out.shape == (1, 4, 10, 9)
    expected = ls_conv2d(x, layer.weight, layer.learnable_stride, layer.bias, 1, 1, 1, (10, 9))
    torch.testing.assert_close(out, expected)


def test_stride_is_clamped_to_bounds_and_can_come_back():
    layer = LSConv2d(1, 1, 3, stride=2, padding=1, stride_bounds=(0.5, 2.0)).double()
    assert layer.stride_min.tolist() == [1.0, 1.0] and layer.stride_max.tolist() == [4.0, 4.0]
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([5.0, 0.5]))
    out = layer(x)
    clamped = torch.tensor([4.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(out, ls_conv2d(x, layer.weight, clamped, layer.bias, 1,
                                              output_size=out.shape[2:]))
    # Past the bounds, only a gradient pointing back inside reaches the parameter.
    stride = torch.tensor([5.0, 0.5], requires_grad=True)
    for upstream, expected in (([1.0, 1.0], [1.0, 0.0]), ([-1.0, -1.0], [0.0, -1.0])):
        bounded = _BoundedStride.apply(stride, torch.ones(2), torch.full((2, ), 4.0))
        grad, = torch.autograd.grad(bounded, stride, torch.tensor(upstream))
        assert grad.tolist() == expected


@pytest.mark.parametrize('at_bound, outward, inward', [
    ((1.0, 4.0), [0.5, -0.5], [-0.5, 0.5]),  # s_h at the low bound, s_w at the high one
    ((4.0, 1.0), [-0.5, 0.5], [0.5, -0.5]),
])
def test_stride_exactly_on_a_bound(at_bound, outward, inward):
    """A stride equal to a bound counts as on it: a descent step outward is blocked, one
    inward passes, and the forward uses the bound itself."""
    stride = torch.tensor(at_bound, requires_grad=True)
    low, high = torch.ones(2), torch.full((2,), 4.0)
    bounded = _BoundedStride.apply(stride, low, high)
    assert bounded.tolist() == list(at_bound)
    # A positive upstream gradient makes descent lower the stride; negative raises it.
    grad, = torch.autograd.grad(bounded, stride, torch.tensor(outward), retain_graph=True)
    assert grad.tolist() == [0.0, 0.0]
    grad, = torch.autograd.grad(bounded, stride, torch.tensor(inward))
    assert grad.tolist() == inward


def test_default_stride_bounds():
    layer = LSConv2d(2, 2, 3, stride=(2, 3))
    assert layer.stride_bounds == (0.25, 4.0)
    assert layer.stride_min.tolist() == [0.5, 0.75] and layer.stride_max.tolist() == [8.0, 12.0]


def test_state_dict_round_trip(tmp_path):
    layer = LSConv2d(3, 4, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([1.7, 2.3]))
    torch.save(layer.state_dict(), tmp_path / 'layer.pth')
    restored = LSConv2d(3, 4, 3, stride=2, padding=1)
    restored.load_state_dict(torch.load(tmp_path / 'layer.pth'))
    assert restored.learnable_stride.tolist() == pytest.approx([1.7, 2.3])
    x = torch.randn(2, 3, 11, 11)
    torch.testing.assert_close(restored(x), layer(x))


def test_loads_a_conv2d_checkpoint():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
    model = nn.Sequential(LSConv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
    with torch.no_grad():
        model[0].learnable_stride.fill_(1.5)
    result = model.load_state_dict(conv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model[0].learnable_stride.tolist() == [2.0, 2.0]
    x = torch.randn(2, 3, 11, 11)
    torch.testing.assert_close(model(x), conv(x))


def test_a_checkpoint_of_other_sizes_is_refused_naming_them():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1)
    with pytest.raises(RuntimeError, match=r'size mismatch for weight: .*\[4, 2, 3, 3\]'):
        layer.load_state_dict(nn.Conv2d(2, 4, 3).state_dict())


def test_initial_stride_is_where_the_stride_starts_and_returns():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, initial_stride=(1.5, 2.5))
    assert layer.learnable_stride.tolist() == [1.5, 2.5]
    with torch.no_grad():
        layer.learnable_stride.fill_(1.9)  # as if trained
    layer.load_state_dict(nn.Conv2d(3, 4, 3, stride=2, padding=1).state_dict())
    assert layer.learnable_stride.tolist() == [1.5, 2.5]
    assert LSConv2d(3, 4, 3, stride=2, initial_stride=3).learnable_stride.tolist() == [3.0, 3.0]


def test_initial_stride_keeps_the_parameter_dtype():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, initial_stride=1.7).double()
    layer.load_state_dict(nn.Conv2d(3, 4, 3, stride=2, padding=1).double().state_dict())
    assert layer.learnable_stride.tolist() == [1.7, 1.7]  # not float32's 1.7000000477
    layer.set_initial_stride(torch.tensor([1.25, 3.5]))
    assert layer.learnable_stride.tolist() == [1.25, 3.5]


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf'), (1.0, 2.0, 3.0),
                                 0.49, 8.01])  # bounds (0.25, 4) x 2: [0.5, 8]
def test_initial_stride_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r'initial_stride=.* expected .* within the stride '
                                         r'bounds \[\(0.5, 8.0\), \(0.5, 8.0\)\]'):
        LSConv2d(3, 4, 3, stride=2, initial_stride=bad)


def test_recovers_a_fractional_stride():
    """Gradient descent on the stride alone finds the stride that made the target."""
    h = torch.arange(48, dtype=torch.float64).view(-1, 1)
    w = torch.arange(48, dtype=torch.float64).view(1, -1)
    image = (torch.sin(0.21 * h + 0.13 * w) + torch.cos(0.17 * h - 0.07 * w) +
             torch.exp(-((h - 20)**2 + (w - 28)**2) / 80)).expand(2, 3, -1, -1)
    torch.manual_seed(0)
    teacher = LSConv2d(3, 4, 3, stride=2, padding=1).double()
    student = LSConv2d(3, 4, 3, stride=2, padding=1).double()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        teacher.learnable_stride.copy_(torch.tensor([1.83, 2.21]))
        target = teacher(image)
    optimizer = torch.optim.Adam([student.learnable_stride], lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        F.mse_loss(student(image), target).backward()
        optimizer.step()
    assert student.learnable_stride.tolist() == pytest.approx([1.83, 2.21], abs=2e-3)


def test_build_conv_layer_and_conv_module():
    cnn = require_module('mmcv.cnn')
    layer = cnn.build_conv_layer(dict(type='LSConv'), 4, 8, 3, stride=2, padding=1)
    assert isinstance(layer, LSConv2d) and layer.stride == (2, 2)
    module = cnn.ConvModule(4, 8, 3, stride=2, padding=1, conv_cfg=dict(type='LSConv'),
                            norm_cfg=dict(type='BN'))
    assert isinstance(module.conv, LSConv2d)
    out = module(torch.randn(2, 4, 16, 16))
    assert out.shape == (2, 8, 8, 8)
    out.sum().backward()
    assert module.conv.learnable_stride.grad is not None


def test_mmdet_registry_finds_lsconv():
    require_module('mmdet')
    from mmdet.registry import MODELS
    layer = MODELS.build(dict(type='LSConv', in_channels=4, out_channels=4, kernel_size=3,
                              stride=2, stride_bounds=(0.5, 2.0)))
    assert isinstance(layer, LSConv2d) and layer.stride_bounds == (0.5, 2.0)


def test_custom_imports_register_lsconv(tmp_path):
    """A config's custom_imports is enough: the registration happens on import."""
    require_module('mmcv')
    config = tmp_path / 'config.py'
    config.write_text(textwrap.dedent("""\
        custom_imports = dict(imports=['mmlstride'], allow_failed_imports=False)
        conv_cfg = dict(type='LSConv')
    """))
    script = textwrap.dedent(f"""\
        from mmengine.config import Config
        from mmcv.cnn import build_conv_layer
        cfg = Config.fromfile({str(config)!r})
        print(type(build_conv_layer(cfg.conv_cfg, 2, 2, 3, stride=2)).__name__)
    """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().endswith('LSConv2d')


def test_mmdet_resnet_with_lsconv_as_dcn():
    """The README's config: LSConv in the 3x3 convs of ResNet-50 stages 2-4."""
    require_module('mmdet')
    from mmdet.registry import MODELS
    backbone = MODELS.build(dict(type='ResNet', depth=50, out_indices=(1, 2, 3),
                                 dcn=dict(type='LSConv'),
                                 stage_with_dcn=(False, True, True, True)))
    strided = [m for m in backbone.modules() if isinstance(m, LSConv2d) and m.stride == (2, 2)]
    assert len(strided) == 3
    assert not any(isinstance(m, LSConv2d) for m in backbone.layer1.modules())
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]


# Where the grid is anchored: pivot='corner' | 'centre', learn_phase.


@pytest.mark.parametrize('config', CONV_CONFIGS)
def test_centre_pivot_at_the_nominal_stride_is_conv2d(config):
    torch.manual_seed(0)
    layer = LSConv2d(**config, pivot='centre', learn_phase=True).double()
    conv = nn.Conv2d(**config).double()
    conv.load_state_dict(layer.state_dict(), strict=False)
    x = torch.randn(2, 4, 15, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def centre_pivot_layer(stride, kernel_size=3, padding=1):
    torch.manual_seed(0)
    layer = LSConv2d(3, 4, kernel_size, stride=2, padding=padding, pivot='centre').double()
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor(stride, dtype=torch.float64))
    return layer


@pytest.mark.parametrize('size', [(21, 21), (20, 17)])
def test_centre_pivot_samples_about_the_centre(size):
    """With the stride moved, the centre pivot's grid is the corner grid translated by
    c * (s0 - s): the centre output pixel samples where nn.Conv2d's does (odd sizes), and the
    whole output equals the op with that phase."""
    layer = centre_pivot_layer([1.63, 2.41])
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    out = layer(x)
    out_size = out.shape[2:]
    centre = [(n - 1) / 2 for n in out_size]
    phase = torch.tensor([c * (2 - s) for c, s in zip(centre, (1.63, 2.41))], dtype=torch.float64)
    expected = ls_conv2d(x, layer.weight, layer.learnable_stride, layer.bias, 1, 1, 1, out_size,
                         phase=phase)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if all(n % 2 for n in out_size):
        a, b = (n // 2 for n in out_size)
        conv = F.conv2d(x, layer.weight, layer.bias, 2, 1)
        torch.testing.assert_close(out[..., a, b], conv[..., a, b], rtol=1e-12, atol=1e-12)


def test_centre_pivot_stride_gradient_includes_the_phase():
    """The stride gradient of the centre pivot is the total derivative: through the sample
    positions and through t = c (s0 - s) (finite differences)."""
    layer = centre_pivot_layer([1.63, 2.41])
    x = torch.randn(2, 3, 19, 22, dtype=torch.float64)
    grad_out = torch.randn(layer(x).shape, dtype=torch.float64)
    analytic, = torch.autograd.grad((layer(x) * grad_out).sum(), layer.learnable_stride)
    step = 1e-6
    for axis in range(2):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                layer.learnable_stride[axis] += sign * step
                values.append((layer(x) * grad_out).sum().item())
                layer.learnable_stride[axis] -= sign * step
        assert analytic[axis].item() == pytest.approx((values[0] - values[1]) / (2 * step),
                                                      rel=1e-6, abs=1e-6)


def test_learned_phase_is_a_parameter_that_moves_the_grid():
    torch.manual_seed(0)
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, learn_phase=True).double()
    assert [name for name, _ in layer.named_parameters()] == \
        ['weight', 'bias', 'learnable_stride', 'learnable_phase']
    assert layer.learnable_phase.tolist() == [0.0, 0.0]
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([1.7, 2.2]))
        layer.learnable_phase.copy_(torch.tensor([0.4, -0.9]))
    x = torch.randn(2, 3, 16, 15, dtype=torch.float64)
    out = layer(x)
    expected = ls_conv2d(x, layer.weight, layer.learnable_stride, layer.bias, 1, 1, 1,
                         out.shape[2:], phase=layer.learnable_phase)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad, = torch.autograd.grad(out.square().sum(), layer.learnable_phase)
    assert grad.abs().min() > 0
    assert 'learnable_phase=(0.4000, -0.9000)' in repr(layer)


def test_centre_pivot_with_a_learned_phase_adds_them():
    layer = centre_pivot_layer([1.63, 2.41])
    both = LSConv2d(3, 4, 3, stride=2, padding=1, pivot='centre', learn_phase=True).double()
    both.load_state_dict(layer.state_dict(), strict=False)
    with torch.no_grad():
        both.learnable_phase.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    x = torch.randn(1, 3, 19, 19, dtype=torch.float64)
    centre = 4.5  # (10 - 1) / 2
    phase = torch.tensor([centre * (2 - 1.63) + 0.3, centre * (2 - 2.41) - 0.2],
                         dtype=torch.float64)
    expected = ls_conv2d(x, both.weight, both.learnable_stride, both.bias, 1, 1, 1, (10, 10),
                         phase=phase)
    torch.testing.assert_close(both(x), expected, rtol=1e-12, atol=1e-12)


def test_checkpoint_without_a_phase_loads_with_phase_zero():
    corner = LSConv2d(3, 4, 3, stride=2, padding=1)
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, learn_phase=True)
    with torch.no_grad():
        layer.learnable_phase.fill_(0.7)
    result = layer.load_state_dict(corner.state_dict())
    assert not result.missing_keys and layer.learnable_phase.tolist() == [0.0, 0.0]
    corner.load_state_dict(layer.state_dict(), strict=False)  # and back, the phase unexpected


def test_initial_phase_is_where_the_phase_starts_and_returns():
    """``initial_phase`` sets the learned phase, a checkpoint without one (nn.Conv2d's, the
    corner grid's) loads it there, and the layer then samples as the op with that phase."""
    torch.manual_seed(0)
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, learn_phase=True, initial_phase=(0.5, -0.25))
    assert layer.initial_phase == (0.5, -0.25) and layer.learnable_phase.tolist() == [0.5, -0.25]
    with torch.no_grad():
        layer.learnable_phase.fill_(0.7)
    layer.load_state_dict(nn.Conv2d(3, 4, 3, stride=2, padding=1).state_dict())
    assert layer.learnable_phase.tolist() == [0.5, -0.25]
    x = torch.randn(2, 3, 11, 12)
    expected = ls_conv2d(x, layer.weight, layer.learnable_stride, layer.bias, 1, 1, 1, (6, 6),
                         phase=torch.tensor([0.5, -0.25]))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert LSConv2d(3, 4, 3, learn_phase=True, initial_phase=0.5).initial_phase == (0.5, 0.5)


def test_centre_offset_per_axis():
    """dilation * (kernel - 1) / 2 - padding: where output (0, 0)'s kernel centre samples."""
    assert LSConv2d(1, 1, (3, 5), stride=2, padding=(1, 0), dilation=(2, 3)).centre_offset() == (
        1.0, 6.0)
    assert LSConv2d(1, 1, (2, 1), stride=2, padding=(0, 1)).centre_offset() == (0.5, -1.0)


def test_follow_stride_refuses_what_cannot_share_a_grid():
    leader = LSConv2d(3, 4, 3, stride=2, padding=1)
    for bad, message in [
            (nn.Conv2d(3, 4, 3, stride=2, padding=1), 'leader=Conv2d expected another LSConv2d'),
            (None, 'leader=NoneType expected another LSConv2d'),
            (leader, 'leader=LSConv2d expected another LSConv2d')]:
        with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
            leader.follow_stride(bad)
    with pytest.raises(ValueError, match=re.escape(
            'leader.stride=(2, 2) expected (2, 1), the nominal stride of the follower') + '$'):
        LSConv2d(3, 4, 1, stride=(2, 1)).follow_stride(leader)
    with pytest.raises(ValueError, match=re.escape(
            'leader centre offset=(0.0, 0.0) expected (1.0, 1.0): the kernel centres must '
            'sample the same grid') + '$'):
        LSConv2d(3, 4, 3, stride=2).follow_stride(leader)


def test_a_follower_of_a_follower_follows_the_first_leader():
    leader = LSConv2d(3, 4, 3, stride=2, padding=1)
    middle, last = LSConv2d(3, 4, 1, stride=2), LSConv2d(3, 4, 1, stride=2)
    middle.follow_stride(leader)
    last.follow_stride(middle)
    assert last.stride_leader is leader and middle.stride_leader is leader


def test_follower_samples_on_the_leaders_grid():
    """A shortcut following a centre-pivot leader with a learned phase samples with the
    leader's stride and phase (its own are removed), so the two branches stay aligned."""
    torch.manual_seed(0)
    leader = LSConv2d(3, 4, 3, stride=2, padding=1, pivot='centre', learn_phase=True).double()
    follower = LSConv2d(3, 4, 1, stride=2, learn_phase=True).double()
    follower.follow_stride(leader)
    assert follower.learnable_phase is None
    assert [name for name, _ in follower.named_parameters()] == ['weight', 'bias']
    with torch.no_grad():
        leader.learnable_stride.copy_(torch.tensor([1.8, 2.3]))
        leader.learnable_phase.copy_(torch.tensor([0.25, -0.5]))
    x = torch.randn(1, 3, 17, 18, dtype=torch.float64)
    out = follower(x)
    phase = leader.sampling_phase(leader.sampling_stride(), out.shape[2:])
    expected = ls_conv2d(x, follower.weight, leader.learnable_stride, follower.bias, 0, 1, 1,
                         out.shape[2:], phase=phase)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (leader.learnable_stride, leader.learnable_phase))
    assert all(g.abs().min() > 0 for g in grads)


def test_fixed_phase_at_stride_2_is_a_box_blur_then_the_strided_conv():
    """phase=0.5 at the nominal stride 2: each output samples the middle of a 2 x 2 pixel
    square, the average of its four pixels (zero outside the image, as MMCV's rule), so the
    layer is a 2 x 2 box average at stride 1 followed by the plain strided conv; the stride
    still learns, the phase takes no gradient."""
    torch.manual_seed(0)
    layer = LSConv2d(3, 5, 3, stride=2, padding=1, phase=0.5).double()
    x = torch.randn(2, 3, 13, 10, dtype=torch.float64)
    blurred = F.avg_pool2d(F.pad(x, (1, 2, 1, 2)), 2, stride=1)
    expected = F.conv2d(blurred, layer.weight, layer.bias, stride=2)
    out = layer(x)
    assert out.shape == F.conv2d(x, layer.weight, stride=2, padding=1).shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(out.sum(), layer.learnable_stride)
    assert grad.abs().min() > 0
    assert not layer.fixed_phase.requires_grad
    assert [name for name, _ in layer.named_parameters()] == ['weight', 'bias', 'learnable_stride']


@pytest.mark.parametrize('pivot', ['corner', 'centre'])
def test_fixed_phase_against_the_references(pivot):
    """A fixed phase (with either pivot, off the nominal stride) samples as the op given that
    phase, and as the independent reference by interpolation matrices, in value and in the
    stride's gradient."""
    from mmlstride.testing import ls_conv2d_by_interpolation
    torch.manual_seed(1)
    layer = LSConv2d(2, 3, 3, stride=2, padding=1, pivot=pivot, phase=(0.3, -0.7)).double()
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([1.83, 2.21]))
    x = torch.randn(2, 2, 12, 11, dtype=torch.float64)
    out = layer(x)
    stride = layer.learnable_stride
    phase = layer.fixed_phase.clone()  # (0.3, -0.7) as float32 held them, then widened
    torch.testing.assert_close(phase, torch.tensor([0.3, -0.7], dtype=torch.float64))
    if pivot == 'centre':
        phase = phase + torch.stack([(2 - stride[k]) * (out.shape[2 + k] - 1) / 2
                                     for k in range(2)])
    expected = ls_conv2d_by_interpolation(x, layer.weight, stride, layer.bias, (1, 1), (1, 1), 1,
                                          tuple(out.shape[2:]), phase)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(y.sum(), stride)[0] for y in (out, expected)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


def test_fixed_phase_is_a_buffer_saved_and_moved():
    layer = LSConv2d(3, 4, 3, stride=2, padding=1, phase=0.5)
    assert layer.fixed_phase.tolist() == [0.5, 0.5]
    state = layer.state_dict()
    assert state['fixed_phase'].tolist() == [0.5, 0.5] and 'learnable_phase' not in state
    assert layer.double().fixed_phase.dtype == torch.float64
    other = LSConv2d(3, 4, 3, stride=2, padding=1, phase=(0.25, 0.75))
    other.load_state_dict(layer.state_dict())  # a fixed-phase model's checkpoint restores it
    assert other.fixed_phase.tolist() == [0.5, 0.5]
    # A checkpoint without one (nn.Conv2d's, a learned-stride model's) keeps the configured one.
    other.load_state_dict(nn.Conv2d(3, 4, 3, stride=2, padding=1).state_dict())
    assert other.fixed_phase.tolist() == [0.5, 0.5]
    fresh = LSConv2d(3, 4, 3, stride=2, padding=1, phase=(0.25, 0.75))
    fresh.load_state_dict(LSConv2d(3, 4, 3, stride=2, padding=1).state_dict())
    assert fresh.fixed_phase.tolist() == [0.25, 0.75]
    assert 'fixed_phase=(0.2500, 0.7500)' in repr(fresh)


def test_follower_samples_on_the_leaders_fixed_phase():
    torch.manual_seed(0)
    leader = LSConv2d(3, 4, 3, stride=2, padding=1, phase=0.5).double()
    follower = LSConv2d(3, 4, 1, stride=2, phase=(0.1, 0.2)).double()
    follower.follow_stride(leader)
    assert follower.fixed_phase is None and 'fixed_phase' not in follower.state_dict()
    x = torch.randn(1, 3, 9, 8, dtype=torch.float64)
    out = follower(x)
    expected = ls_conv2d(x, follower.weight, leader.learnable_stride, follower.bias, 0, 1, 1,
                         out.shape[2:], phase=torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs,message', [
    (dict(pivot='center'), "pivot='center' expected 'corner' or 'centre'"),
    (dict(phase=0.5, learn_phase=True),
     'phase=0.5 expected None with learn_phase=True: phase fixes the grid, initial_phase says'),
    (dict(phase=float('inf')), 'phase=inf expected a finite number or a pair of them'),
    (dict(phase=(0.5, 0.5, 0.5)), 'phase=(0.5, 0.5, 0.5) expected a finite number or a pair'),
    (dict(learn_phase=1), 'learn_phase=1 expected True or False'),
    (dict(initial_phase=0.5), 'initial_phase=0.5 expected None unless learn_phase=True'),
    (dict(learn_phase=True, initial_phase=float('nan')),
     'initial_phase=nan expected a finite number or a pair of them'),
    (dict(learn_phase=True, initial_phase=(0.5, 0.5, 0.5)),
     'initial_phase=(0.5, 0.5, 0.5) expected a finite number or a pair of them'),
    (dict(learn_phase=True, initial_phase='half'),
     "initial_phase='half' expected a finite number or a pair of them"),
])
def test_pivot_and_phase_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        LSConv2d(4, 4, 3, **kwargs)
    assert message in str(info.value)


def test_conv_cfg_passes_pivot_and_learn_phase():
    build_conv_layer = require_module('mmcv.cnn').build_conv_layer
    layer = build_conv_layer(dict(type='LSConv', pivot='centre', learn_phase=True), 4, 8, 3,
                             stride=2, padding=1)
    assert isinstance(layer, LSConv2d) and layer.pivot == 'centre'
    assert layer.learnable_phase is not None


def test_repr_names_the_stride_the_pivot_and_the_phases():
    layer = LSConv2d(2, 4, 3, stride=2, phase=(0.25, -0.5))
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([1.5, 2.0]))
    text = layer.extra_repr()
    assert text.startswith('2, 4, kernel_size=(3, 3)')
    assert text.endswith(f', learnable_stride=(1.5000, 2.0000), pivot={layer.pivot}, '
                         'fixed_phase=(0.2500, -0.5000)')
    follower = LSConv2d(2, 4, 3, stride=2)
    follower.follow_stride(layer)
    assert follower.extra_repr().endswith(
        f', leader_stride=(1.5000, 2.0000), pivot={layer.pivot}, fixed_phase=(0.2500, -0.5000)')


STRIDE_EXPECTED = 'expected an int >= 1 or a pair of ints >= 1'


@pytest.mark.parametrize('kwargs,message', [
    (dict(padding='same'), "padding='same' expected an int or a pair of ints"),
    (dict(padding_mode='reflect'), "padding_mode='reflect' expected 'zeros'"),
    (dict(stride_bounds=(0.0, 2.0)),
     'stride_bounds=(0.0, 2.0) expected (low, high) with 0 < low <= 1 <= high'),
    (dict(stride_bounds=(1.5, 2.0)),
     'stride_bounds=(1.5, 2.0) expected (low, high) with 0 < low <= 1 <= high'),
    (dict(stride_bounds=(0.5, 0.9)),
     'stride_bounds=(0.5, 0.9) expected (low, high) with 0 < low <= 1 <= high'),
    (dict(stride=0), f'stride=0 {STRIDE_EXPECTED}'),
    (dict(stride=-1), f'stride=-1 {STRIDE_EXPECTED}'),
    (dict(stride=(2, 0)), f'stride=(2, 0) {STRIDE_EXPECTED}'),
    (dict(stride=1.5), f'stride=1.5 {STRIDE_EXPECTED}'),
    (dict(stride=True), f'stride=True {STRIDE_EXPECTED}'),
    (dict(stride=(1, 2, 3)), f'stride=(1, 2, 3) {STRIDE_EXPECTED}'),
])
def test_layer_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        LSConv2d(4, 4, 3, **kwargs)
    assert str(info.value) == message


def test_layer_input_rank():
    with pytest.raises(ValueError) as info:
        LSConv2d(4, 4, 3)(torch.randn(4, 8, 8))
    assert str(info.value) == 'input.dim()=3 expected 4 (N, C, H, W)'


def test_arguments_left_out_are_those_of_conv2d():
    layer, conv = LSConv2d(4, 6, 3), nn.Conv2d(4, 6, 3)
    for name in ('stride', 'padding', 'dilation', 'groups', 'padding_mode'):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.bias is not None and conv.bias is not None


@pytest.mark.parametrize('bounds', [(1.0, 1.0), (0.5, 1.0), (1.0, 3.0)])
def test_stride_bounds_may_hold_the_nominal_stride_at_either_end(bounds):
    layer = LSConv2d(4, 4, 3, stride=2, stride_bounds=bounds)
    assert layer.stride_min.tolist() == [2 * bounds[0]] * 2
    assert layer.stride_max.tolist() == [2 * bounds[1]] * 2


@pytest.mark.parametrize('value', [1.0, 4.0, (1.0, 4.0)])
def test_initial_stride_may_sit_on_a_bound(value):
    layer = LSConv2d(4, 4, 3, stride=2, stride_bounds=(0.5, 2.0), initial_stride=value)
    assert layer.learnable_stride.tolist() == list(value if isinstance(value, tuple)
                                                   else (value, value))


@pytest.mark.parametrize('grid', [dict(phase=(0.5, 0.25)), dict(learn_phase=True)], ids=str)
def test_every_tensor_has_the_given_device_and_dtype(grid):
    """Parameters and buffers, the stride and phase ones included, are made on ``device`` in
    ``dtype`` (here the meta device, as for a model built before its weights are loaded)."""
    layer = LSConv2d(4, 6, 3, stride=2, device='meta', dtype=torch.float64, **grid)
    tensors = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
    phase = 'fixed_phase' if 'phase' in grid else 'learnable_phase'
    assert set(tensors) == {'weight', 'bias', 'learnable_stride', 'stride_min', 'stride_max',
                            phase}
    for name, tensor in tensors.items():
        assert tensor.device.type == 'meta' and tensor.dtype == torch.float64, name


@pytest.mark.parametrize('grid, saved', [(dict(), ()), (dict(phase=0.5), ('fixed_phase', )),
                                         (dict(learn_phase=True), ('learnable_phase', ))],
                         ids=str)
def test_state_dict_holds_the_parameters_and_a_fixed_phase(grid, saved):
    """The stride bounds, which follow from the arguments, are not saved."""
    layer = LSConv2d(4, 6, 3, stride=2, **grid)
    assert set(layer.state_dict()) == {'weight', 'bias', 'learnable_stride', *saved}


def test_grid_arguments_may_be_tensors():
    """initial_stride, phase and initial_phase take tensors of one or two values as they take
    numbers."""
    layer = LSConv2d(4, 6, 3, stride=2, initial_stride=torch.tensor([1.5, 2.5]),
                     phase=torch.tensor(0.25))
    assert layer.learnable_stride.tolist() == [1.5, 2.5]
    assert layer.fixed_phase.tolist() == [0.25, 0.25]
    learning = LSConv2d(4, 6, 3, stride=2, learn_phase=True,
                        initial_phase=torch.tensor([0.5, -0.25]))
    assert learning.learnable_phase.tolist() == [0.5, -0.25]
    assert learning.initial_phase == (0.5, -0.25)


def test_initial_phase_is_exact_in_float64():
    """A float64 layer's learned phase starts at the float64 value given, not a float32
    rounding of it, and returns there."""
    layer = LSConv2d(4, 6, 3, stride=2, learn_phase=True, initial_phase=(0.1, -0.3),
                     dtype=torch.float64)
    assert layer.learnable_phase.tolist() == [0.1, -0.3]
    with torch.no_grad():
        layer.learnable_phase.zero_()
    layer.reset_phase()
    assert layer.learnable_phase.tolist() == [0.1, -0.3]


def test_a_deployed_layer_holds_its_grid():
    """After switch_to_deploy the parameters no longer act: a stride written into the
    parameter later (here a whole one) changes nothing."""
    torch.manual_seed(0)
    layer = LSConv2d(4, 6, 3, stride=2, padding=1, initial_stride=1.5).double()
    switch_to_deploy(layer)
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    before = layer(x)
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor([2.0, 2.0]))
    assert torch.equal(layer(x), before)

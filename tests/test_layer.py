"""LSConv2d as an nn.Conv2d drop-in and as the registered 'LSConv' layer."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import require_module
from mmlstride.ops import LSConv2d, ls_conv2d
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
    ((1.0, 4.0), [1.0, -1.0], [-1.0, 1.0]),  # s_h at the low bound, s_w at the high one
    ((4.0, 1.0), [-1.0, 1.0], [1.0, -1.0]),
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

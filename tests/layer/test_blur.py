"""BlurConv2d, the fixed anti-aliasing baseline: against an independent reference (the blur by
reflected indices), nn.Conv2d's output sizes and state dicts, its argument errors, and ONNX."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import needs_torch_for, require_module
from mmlstride.ops import BlurConv2d
from mmlstride.ops.blur_conv2d import binomial_filter


def reflected(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices reflected into [0, size) about the edges (no repeat of the edge pixel)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def blur_by_indices(x: torch.Tensor, taps: int, stride: int) -> torch.Tensor:
    """The binomial blur of ``x`` at ``stride`` as a weighted sum of reflected pixels."""
    row = binomial_filter(taps).sum(0)  # the 1-D filter, normalised
    before = (taps - 1) // 2
    height, width = x.shape[2:]
    out_h = (height + taps - 1 - taps) // stride + 1
    out_w = (width + taps - 1 - taps) // stride + 1
    out = torch.zeros(*x.shape[:2], out_h, out_w, dtype=x.dtype)
    for u in range(taps):
        rows = reflected(torch.arange(out_h) * stride + u - before, height)
        for v in range(taps):
            cols = reflected(torch.arange(out_w) * stride + v - before, width)
            out += row[u] * row[v] * x[:, :, rows][:, :, :, cols]
    return out


def test_binomial_filter():
    assert torch.equal(binomial_filter(3) * 16,
                       torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]], dtype=torch.float64))
    assert binomial_filter(4)[0].tolist() == pytest.approx([v / 64 for v in (1, 3, 3, 1)])
    assert all(binomial_filter(n).sum().item() == pytest.approx(1.0) for n in range(2, 8))


def test_binomial_filter_is_float64_from_one_tap():
    """Every size, the one-tap identity filter [[1]] included, comes in float64, and size 7 is
    row 6 of Pascal's triangle (1 6 15 20 15 6 1) / 64 along each axis."""
    assert torch.equal(binomial_filter(1), torch.ones(1, 1, dtype=torch.float64))
    assert all(binomial_filter(n).dtype == torch.float64 for n in range(1, 8))
    row = torch.tensor([1., 6., 15., 20., 15., 6., 1.], dtype=torch.float64) / 64
    assert torch.equal(binomial_filter(7), row[:, None] * row[None, :])


@pytest.mark.parametrize('taps', [2, 3, 4])
@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
def test_against_the_reference(order, taps):
    torch.manual_seed(0)
    layer = BlurConv2d(3, 4, 3, stride=2, padding=1, order=order, filter_size=taps).double()
    x = torch.randn(2, 3, 11, 14, dtype=torch.float64)
    if order == 'conv-blur':
        expected = blur_by_indices(F.conv2d(x, layer.weight, layer.bias, padding=1), taps, 2)
    else:
        expected = F.conv2d(blur_by_indices(x, taps, 1), layer.weight, layer.bias, stride=2,
                            padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
def test_dilation_and_groups_reach_the_conv(order):
    """dilation and groups are nn.Conv2d's at stride 2 as well, in both orders."""
    torch.manual_seed(0)
    layer = BlurConv2d(6, 9, 3, stride=2, padding=2, dilation=2, groups=3,
                       order=order).double()
    x = torch.randn(2, 6, 13, 10, dtype=torch.float64)
    if order == 'conv-blur':
        full = F.conv2d(x, layer.weight, layer.bias, padding=2, dilation=2, groups=3)
        expected = blur_by_indices(full, 3, 2)
    else:
        expected = F.conv2d(blur_by_indices(x, 3, 1), layer.weight, layer.bias, stride=2,
                            padding=2, dilation=2, groups=3)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_defaults_are_conv2d_s_and_a_three_tap_blur():
    """Left out, stride is 1 and padding 0 as in nn.Conv2d (a plain conv), and filter_size is 3:
    at stride 2 the default layer blurs with [1, 2, 1] x [1, 2, 1] / 16."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    plain = BlurConv2d(2, 3, 3).double()
    assert (plain.stride, plain.padding, plain.order) == ((1, 1), (0, 0), 'conv-blur')
    torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, plain.bias),
                               rtol=1e-12, atol=1e-12)
    strided = BlurConv2d(2, 3, 3, stride=2).double()
    assert strided.filter_size == 3
    full = F.conv2d(x, strided.weight, strided.bias)
    torch.testing.assert_close(strided(x), blur_by_indices(full, 3, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('taps', [2, 7])
def test_filter_sizes_two_and_seven_are_accepted(taps):
    """The ends of the allowed range 2 to 7 build and blur as the reference does."""
    torch.manual_seed(0)
    layer = BlurConv2d(2, 2, 1, stride=2, bias=False, filter_size=taps).double()
    x = torch.randn(1, 2, 12, 11, dtype=torch.float64)
    full = F.conv2d(x, layer.weight)
    torch.testing.assert_close(layer(x), blur_by_indices(full, taps, 2), rtol=1e-12, atol=1e-12)


def test_device_and_dtype_reach_every_tensor():
    """device= and dtype= put the weight, the bias and the blur filter on that device in that
    dtype (the meta device: no data), and the layer runs there; left out, all are float32."""
    layer = BlurConv2d(2, 3, 3, stride=2, device='meta', dtype=torch.float64)
    for tensor in (layer.weight, layer.bias, layer.blur_filter):
        assert (tensor.device.type, tensor.dtype) == ('meta', torch.float64)
    x = torch.empty(1, 2, 9, 9, device='meta', dtype=torch.float64)
    assert layer(x).shape == (1, 3, 4, 4)
    layer = BlurConv2d(2, 3, 3, stride=2)
    assert [t.dtype for t in (layer.weight, layer.bias, layer.blur_filter)] == [torch.float32] * 3


def test_blur_keeps_the_input_s_dtype():
    """blur() filters a map of any float dtype in that dtype: a float64 map through a float32
    layer matches the float64 reference, and a float32 map comes out float32."""
    torch.manual_seed(0)
    layer = BlurConv2d(2, 2, 3, stride=2)
    x = torch.randn(1, 2, 10, 9, dtype=torch.float64)
    found = layer.blur(x, (2, 2))
    assert found.dtype == torch.float64
    torch.testing.assert_close(found, blur_by_indices(x, 3, 2), rtol=1e-12, atol=1e-12)
    assert layer.blur(x.float(), (2, 2)).dtype == torch.float32


@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
@pytest.mark.parametrize('kernel,padding', [(3, 1), (1, 0), (5, 2)])
def test_output_size_and_state_dict_are_conv2d_s(order, kernel, padding):
    conv = nn.Conv2d(4, 6, kernel, stride=2, padding=padding)
    layer = BlurConv2d(4, 6, kernel, stride=2, padding=padding, order=order)
    layer.load_state_dict(conv.state_dict())  # strict: the same names, no buffer saved
    assert list(layer.state_dict()) == ['weight', 'bias']
    for size in (7, 8, 13, 16):
        x = torch.randn(1, 4, size, size + 3)
        assert layer(x).shape == conv(x).shape
    plain = BlurConv2d(4, 6, kernel, stride=1, padding=padding, order=order)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(plain(x), F.conv2d(x, conv.weight, conv.bias, padding=padding))


def test_blur_removes_what_the_stride_would_alias():
    """A checkerboard (the highest frequency) at stride 2: the plain conv sees it at full
    strength, the blurred layers see nothing but its edge rows (the reflection)."""
    x = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).double()[None, None] * 2 - 1
    weight = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    weight[0, 0, 0, 0] = 1.0
    plain = F.conv2d(x, weight, stride=2)
    assert plain.abs().min() == 1.0
    for order in ('conv-blur', 'blur-conv'):
        layer = BlurConv2d(1, 1, 1, stride=2, bias=False, order=order).double()
        layer.weight.data.copy_(weight)
        assert layer(x)[..., 1:-1, 1:-1].abs().max() < 1e-12


@pytest.mark.parametrize('kwargs,message', [
    (dict(order='blur'), "order='blur' expected 'conv-blur' or 'blur-conv'"),
    (dict(filter_size=1), 'filter_size=1 expected an int from 2 to 7'),
    (dict(filter_size=3.0), 'filter_size=3.0 expected an int from 2 to 7'),
    (dict(filter_size=8), 'filter_size=8 expected an int from 2 to 7'),
    (dict(padding='same'), "padding='same' expected an int or a pair of ints"),
    (dict(padding_mode='reflect'), "padding_mode='reflect' expected 'zeros'"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        BlurConv2d(4, 4, 3, stride=2, **kwargs)
    assert message in str(info.value)


def test_conv_cfg_builds_it():
    build_conv_layer = require_module('mmcv.cnn').build_conv_layer
    layer = build_conv_layer(dict(type='BlurConv', order='blur-conv', filter_size=4), 4, 8, 3,
                             stride=2, padding=1)
    assert isinstance(layer, BlurConv2d) and (layer.order, layer.filter_size) == ('blur-conv', 4)


@needs_torch_for('the dynamo ONNX exporter')
@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
def test_onnx_export_runs_in_onnxruntime(order, tmp_path):
    require_module('onnx')
    require_module('onnxscript')
    ort = require_module('onnxruntime')
    torch.manual_seed(0)
    layer = BlurConv2d(3, 5, 3, stride=2, padding=1, order=order).eval()
    path = tmp_path / 'blur.onnx'
    batch = torch.export.Dim('batch')
    height, width = (torch.export.Dim(name, min=8) for name in ('height', 'width'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(layer, (torch.randn(2, 3, 32, 40), ), path, opset_version=18,
                          dynamo=True, verbose=False,
                          dynamic_shapes=({0: batch, 2: height, 3: width}, ))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for shape in ((1, 3, 17, 22), (3, 3, 48, 33)):
        x = torch.randn(shape)
        found = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(found, layer(x), rtol=1e-4, atol=1e-5)

"""Autocast: the op runs in float32 on CPU (its kernels have no low-precision path) and in the
autocast dtype on CUDA, as F.conv2d does; gradients reach float32 parameters in float32."""
import pytest
import torch

from conftest import CUDA_AVAILABLE, require_cuda_kernels
from mmlstride.ops import LSConv2d
from mmlstride.testing import norm_relative_error


def layer_and_input(device):
    torch.manual_seed(0)
    layer = LSConv2d(4, 6, 3, stride=2, padding=1).to(device)
    with torch.no_grad():
        layer.learnable_stride.add_(torch.tensor([0.137, -0.219], device=device))
    return layer, torch.randn(2, 4, 11, 9, device=device)


@pytest.mark.parametrize('input_dtype', [torch.float32, torch.bfloat16])
def test_cpu_autocast_runs_in_float32(input_dtype):
    """A bfloat16 input (say, from an autocast conv before it) is cast to float32, not refused."""
    layer, x = layer_and_input('cpu')
    x = x.to(input_dtype)
    expected = layer(x.float())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    out.square().sum().backward()
    assert layer.weight.grad.dtype == layer.learnable_stride.grad.dtype == torch.float32


def test_cpu_autocast_leaves_float64_alone():
    layer, x = layer_and_input('cpu')
    layer, x = layer.double(), x.double()
    expected = layer(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float64
    assert torch.equal(out, expected)
    out.sum().backward()
    assert layer.weight.grad.dtype == layer.learnable_stride.grad.dtype == torch.float64


def test_cpu_op_casts_only_under_autocast():
    x = torch.randn(1, 2, 6, 6, dtype=torch.bfloat16)
    w = torch.randn(3, 2, 3, 3)
    stride = torch.tensor([1.5, 1.5])
    args = (stride, None, (1, 1), (1, 1), 1, (4, 4))
    with pytest.raises(TypeError, match='input.dtype=BFloat16 expected float32 or float64 on cpu'):
        torch.ops.mmlstride.ls_conv2d(x, w, *args)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = torch.ops.mmlstride.ls_conv2d(x, w, *args)
    assert torch.equal(out, torch.ops.mmlstride.ls_conv2d(x.float(), w, *args))


@pytest.mark.skipif(not CUDA_AVAILABLE, reason='no CUDA device')
@pytest.mark.parametrize('dtype,tolerance', [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_cuda_autocast_runs_in_autocast_dtype(dtype, tolerance):
    require_cuda_kernels()
    layer, x = layer_and_input('cuda')
    with torch.autocast('cuda', dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    assert layer.weight.grad.dtype == layer.learnable_stride.grad.dtype == torch.float32
    assert torch.isfinite(layer.learnable_stride.grad).all()
    # Against the layer in float64 on the same rounded input and weight.
    exact = LSConv2d(4, 6, 3, stride=2, padding=1).double().cuda()
    exact.load_state_dict(layer.state_dict())
    with torch.no_grad():
        exact.weight.copy_(layer.weight.to(dtype))
        exact.bias.copy_(layer.bias.to(dtype))
        expected = exact(x.to(dtype).double())
    assert norm_relative_error(out, expected) < tolerance

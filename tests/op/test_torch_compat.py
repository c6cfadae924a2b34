"""The supported torch range: the version floor at import and build, features that need a newer
torch refused by name, and the torch.library fallbacks that older torch versions use (run here
on the running torch by hiding its newer registration functions)."""
import os
import subprocess
import sys

import pytest
import torch

from mmlstride import torch_compat
from mmlstride.torch_compat import (FEATURES, TORCH_FLOOR, check_torch_floor, onnx_export,
                                    register_autograd, register_fake, require_feature,
                                    torch_version)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('version,expected', [('2.1.2+cu121', (2, 1)), ('2.14.1', (2, 14)),
                                              ('2.13.0+cpu', (2, 13)), ('3.0.0a0', (3, 0))])
def test_torch_version(version, expected):
    assert torch_version(version) == expected


def test_torch_version_not_a_version():
    with pytest.raises(ValueError, match=r"torch.__version__='nightly' expected a version"):
        torch_version('nightly')


def test_floor_refuses_an_older_torch_by_name():
    with pytest.raises(ImportError, match=r'mmlstride needs torch >= 2\.1; found torch 2\.0\.1'):
        check_torch_floor('2.0.1')
    check_torch_floor('2.1.0')
    check_torch_floor('2.14.1')
    assert TORCH_FLOOR == (2, 1)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_import_on_a_torch_below_the_floor_raises_one_clear_error():
    """`import mmlstride` (and `import mmlstride.ops`) on a torch older than the floor fails
    with the ImportError naming both versions, before anything else goes wrong."""
    for module in ('mmlstride', 'mmlstride.ops'):
        result = run_python(f"import torch; torch.__version__ = '2.0.1'; import {module}")
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last == ('ImportError: mmlstride needs torch >= 2.1; found torch 2.0.1. Install '
                        'torch 2.1 or newer, then rebuild mmlstride.'), result.stderr


def test_setup_py_refuses_to_build_against_a_torch_below_the_floor():
    result = run_python("import sys, torch; torch.__version__ = '1.13.1'; sys.argv = ['setup.py']; "
                        "sys.path.insert(0, '.'); import setup; setup.make_extensions()")
    assert 'ImportError: mmlstride needs torch >= 2.1; found torch 1.13.1' in result.stderr


@pytest.fixture
def old_torch(monkeypatch):
    """The running torch reported as 2.1.2."""
    monkeypatch.setattr(torch, '__version__', '2.1.2')


def test_features_newer_than_the_floor_are_refused_by_name(old_torch):
    for feature, needed in FEATURES.items():
        assert needed > TORCH_FLOOR
        with pytest.raises(RuntimeError, match=rf'^{feature} needs torch >= '
                                               rf'{needed[0]}\.{needed[1]}; found torch 2\.1\.2$'):
            require_feature(feature)


def test_dynamo_onnx_export_on_an_older_torch_says_so(old_torch, tmp_path):
    with pytest.raises(RuntimeError, match='the dynamo ONNX exporter needs torch >= 2.6'):
        onnx_export(torch.nn.Conv2d(1, 1, 1), (torch.randn(1, 1, 4, 4), ),
                    tmp_path / 'x.onnx', 18, dynamo=True)


# A toy op for the fallbacks: scale(x, factor=2.0) = factor * x, with its last argument at
# its default when called without it, as the dispatcher then passes it to Python kernels.
_DEFINITIONS = torch.library.Library('mmlstride_compat_test', 'DEF')
_DEFINITIONS.define('scale(Tensor x, float factor=2.0) -> Tensor')
_DEFINITIONS.define('scale_fake(Tensor x, int rows) -> Tensor')
_DEFINITIONS.impl('scale', lambda x, factor=2.0: x * factor, 'CPU')
_DEFINITIONS.impl('scale_fake', lambda x, rows: x.new_zeros(rows, *x.shape), 'CPU')


def test_autograd_fallback_of_older_torch(monkeypatch):
    """Without torch.library.register_autograd (torch < 2.4) the op gets an Autograd kernel
    that runs backward and setup_context as register_autograd would, defaults included."""
    monkeypatch.delattr(torch.library, 'register_autograd', raising=False)
    seen = []

    def setup_context(ctx, inputs, output):
        seen.append(len(inputs))
        ctx.factor = inputs[1]

    def backward(ctx, grad):
        return grad * ctx.factor, None

    register_autograd('mmlstride_compat_test::scale', backward, setup_context)
    op = torch.ops.mmlstride_compat_test.scale
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for args, factor in (((), 2.0), ((-0.5, ), -0.5)):
        y = op(x, *args)
        assert torch.equal(y.detach(), factor * x.detach())
        (grad, ) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad, torch.full_like(x, factor))
    assert seen == [2, 2]
    assert torch.autograd.gradcheck(lambda t: op(t, 0.75), (x, ))


def test_fake_fallback_of_torch_2_1(monkeypatch):
    """Without register_fake and impl_abstract (torch 2.1) the shape function becomes the op's
    Meta kernel."""
    monkeypatch.delattr(torch.library, 'register_fake', raising=False)
    monkeypatch.delattr(torch.library, 'impl_abstract', raising=False)
    register_fake('mmlstride_compat_test::scale_fake',
                  lambda x, rows: x.new_empty(rows, *x.shape))
    out = torch.ops.mmlstride_compat_test.scale_fake(torch.empty(2, 5, device='meta'), 3)
    assert out.device.type == 'meta' and out.shape == (3, 2, 5)
    assert torch_compat._LIBRARIES['mmlstride_compat_test'] is not None

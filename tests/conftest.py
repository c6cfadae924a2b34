"""Device parametrisation shared by the tests: every test that takes ``device`` runs on the
CPU and, where a GPU is visible, on CUDA (skipped otherwise)."""
import os

import pytest
import torch

# Older torch versions refuse cuBLAS under torch.use_deterministic_algorithms(True)
# unless this is set before CUDA starts (tests/test_cuda.py uses deterministic mode).
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')

CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not CUDA_AVAILABLE,
                                                                 reason='no CUDA device'))]


def require_cuda_kernels() -> None:
    """Fails (not skips) when a GPU is visible but mmlstride._ext has no CUDA kernels."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key('mmlstride::ls_conv2d', 'CUDA'):
        pytest.fail('a GPU is visible but mmlstride._ext was built without CUDA kernels: '
                    'rebuild with the CUDA toolkit (or FORCE_CUDA=1)')


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    if request.param == 'cuda':
        require_cuda_kernels()
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def full_precision_float32():
    """cuDNN's TF32 mode (on by default for convolutions) would make float32 references
    accurate to about 1e-3 only; tests compare against full float32."""
    if not CUDA_AVAILABLE:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

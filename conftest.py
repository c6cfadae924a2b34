"""Shared by the tests (the product's in tests/, the study's in projects/lsconv_study/tests):
the repository on the PYTHONPATH of the processes tests start (the study's configs import
projects.lsconv_study), the device parametrisation (every test that takes ``device`` runs on the
CPU and, where a GPU is visible, on CUDA), the rule that CI fails instead of skipping when a
tool it expects is missing, and one summary line per group of skipped tests."""
import collections
import contextlib
import importlib.util
import os

import pytest
import torch

from mmlstride.torch_compat import FEATURES, has_feature

REPO = os.path.dirname(os.path.abspath(__file__))
os.environ['PYTHONPATH'] = os.pathsep.join(
    p for p in (REPO, os.environ.get('PYTHONPATH')) if p)

# Older torch versions refuse cuBLAS under torch.use_deterministic_algorithms(True)
# unless this is set before CUDA starts (tests/cuda/test_cuda.py uses deterministic mode).
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')

CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not CUDA_AVAILABLE,
                                                                 reason='no CUDA device'))]


# Under CI (CI=true) the toolkit and the OpenMMLab stack are part of the machine: their
# absence fails the tests that need them instead of skipping them.
IN_CI = os.environ.get('CI', '').lower() == 'true'


# tools/setup_env.sh with MMLSTRIDE_OPENMMLAB=0 installs no mmcv, mmdet (with its pycocotools)
# or mim: their tests are skipped then, CI or not.
OPENMMLAB = ('mmcv', 'mmdet', 'mim', 'pycocotools')
WITHOUT_OPENMMLAB = os.environ.get('MMLSTRIDE_OPENMMLAB') == '0'


def require(available: bool, what: str, expected_in_ci: bool = True) -> None:
    """Skips the calling test when ``what`` is missing; fails it under CI where CI has it
    (``expected_in_ci``)."""
    if available:
        return
    if IN_CI and expected_in_ci:
        pytest.fail(f'{what} is missing, and CI (CI=true) expects it')
    pytest.skip(f'needs {what}', allow_module_level=True)


def needs_torch_for(feature: str):
    """Skips a test of ``feature`` (a key of mmlstride.torch_compat.FEATURES) on a torch
    older than the one that has it, saying which."""
    needed = '.'.join(map(str, FEATURES[feature]))
    return pytest.mark.skipif(not has_feature(feature),
                              reason=f'{feature} needs torch >= {needed}')


def require_module(name: str):
    """The imported module ``name``, or :func:`require`'s skip (CI: failure)."""
    try:
        return __import__(name, fromlist=['_'])
    except ImportError:
        require(False, f'the Python module {name}',
                expected_in_ci=not (WITHOUT_OPENMMLAB and name.split('.')[0] in OPENMMLAB))


def pytest_terminal_summary(terminalreporter):
    """One line per reason tests were skipped, with their count and files."""
    groups = collections.defaultdict(set)
    counts = collections.Counter()
    for report in terminalreporter.stats.get('skipped', []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix('Skipped: ')
        counts[reason] += 1
        groups[reason].add(report.nodeid.split('::')[0])
    if counts:
        terminalreporter.section('skipped groups')
        for reason, count in counts.most_common():
            terminalreporter.line(f'{count} skipped: {reason} ({", ".join(sorted(groups[reason]))})')


def load_tool(name: str):
    """The command-line tool ``tools/<name>.py`` as a module (its ``main`` and helpers)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@contextlib.contextmanager
def bitwise_repeatable(device: torch.device):
    """Deterministic mode on CUDA, where the input gradient's atomic scatter otherwise sums in
    an order that varies between runs (the gather replaces it); nothing on the CPU, whose
    kernels repeat bit for bit."""
    if device.type != 'cuda':
        yield
        return
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved)

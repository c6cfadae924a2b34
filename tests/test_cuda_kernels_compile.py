"""The torch-free CUDA kernel headers compile with nvcc for every dtype (float, double, half,
bfloat16) and every backward variant, on machines without a GPU too."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NVCC = shutil.which('nvcc')


@pytest.mark.skipif(NVCC is None, reason='nvcc not installed')
@pytest.mark.parametrize('arch', ['sm_75', 'sm_80', 'sm_90'])
def test_cuda_kernels_compile(arch, tmp_path):
    result = subprocess.run(
        [NVCC, '-std=c++17', f'-arch={arch}', '-I', str(REPO / 'csrc'), '-Xcompiler', '-Wall',
         '-Werror', 'all-warnings', '-c', str(REPO / 'tests' / 'cuda' / 'instantiate_kernels.cu'),
         '-o', str(tmp_path / 'kernels.o')],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

"""The CUDA code compiles on machines without a GPU or a CUDA build of torch, with the flags
torch's extension builder uses (its half-conversion macros included):

- the torch-free kernel headers, with nvcc, for every dtype, index type and backward
  variant, for three GPU generations, warnings as errors;
- the launchers (csrc/pytorch/cuda), with nvcc against this torch's headers;
- the host code with its CUDA registrations (WITH_CUDA), with the C++ compiler.

Nothing is linked or run: that needs a GPU machine (tests/test_cuda.py)."""
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from conftest import require

REPO = Path(__file__).resolve().parents[1]
NVCC = shutil.which('nvcc')
CXX = shutil.which('c++')
# CUDA builds of torch generate one header that CPU wheels lack; a stand-in takes its place.
TORCH_INCLUDES = [f'-I{REPO / "tests" / "cuda" / "torch_shim"}'] + [
    f'-I{path}' for path in cpp_extension.include_paths()]


def compile_ok(command, ours_only=False):
    """Runs a compiler; with ours_only, warnings in torch's headers are tolerated and only
    diagnostics that name this repository's csrc/ fail."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    if ours_only:
        ours = [line for line in output.splitlines() if 'csrc/' in line]
        assert not ours, '\n'.join(ours)


@pytest.mark.parametrize('arch', ['sm_75', 'sm_80', 'sm_90'])
def test_kernels_compile(arch, tmp_path):
    require(NVCC is not None, 'nvcc (the CUDA toolkit)')
    compile_ok([NVCC, '-std=c++17', *cpp_extension.COMMON_NVCC_FLAGS, f'-arch={arch}',
                '-I', str(REPO / 'csrc'), '-Xcompiler', '-Wall', '-Werror', 'all-warnings', '-c',
                str(REPO / 'tests' / 'cuda' / 'instantiate_kernels.cu'),
                '-o', str(tmp_path / 'kernels.o')])


def test_launchers_compile(tmp_path):
    require(NVCC is not None, 'nvcc (the CUDA toolkit)')
    compile_ok([NVCC, '-std=c++20', *cpp_extension.COMMON_NVCC_FLAGS, '-arch=sm_90', '-DWITH_CUDA',
                *TORCH_INCLUDES, '-Xcompiler', '-Wall', '-c',
                str(REPO / 'csrc' / 'pytorch' / 'cuda' / 'ls_conv_cuda.cu'),
                '-o', str(tmp_path / 'launchers.o')], ours_only=True)


def test_host_code_with_cuda_registrations_compiles(tmp_path):
    require(CXX is not None, 'a C++ compiler (c++)')
    compile_ok([CXX, '-std=c++20', '-DWITH_CUDA', *TORCH_INCLUDES, '-Wall', '-c',
                str(REPO / 'csrc' / 'pytorch' / 'ls_conv.cpp'),
                '-o', str(tmp_path / 'ls_conv.o')], ours_only=True)

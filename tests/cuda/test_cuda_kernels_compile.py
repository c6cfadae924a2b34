"""The CUDA code compiles on machines without a GPU or a CUDA build of torch, with the flags
torch's extension builder uses (its half-conversion macros included):

- the torch-free kernel headers, with nvcc, for every dtype, index type and backward
  variant, for every architecture of setup.py's default list, warnings as errors;
- the CUDA backend (csrc/pytorch/cuda: launchers and registration), with nvcc against this
  torch's headers;
- and the kernels' PTX is read for float64 arithmetic and integer divisions.

Nothing is linked or run: that needs a GPU machine (tests/cuda/test_cuda.py)."""
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from conftest import require

REPO = Path(__file__).resolve().parents[2]
NVCC = shutil.which('nvcc')
CXXFILT = shutil.which('c++filt')
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


def default_archs():
    """setup.py's default architectures (DEFAULT_CUDA_ARCHS) as nvcc names: sm_75, ..."""
    spec = importlib.util.spec_from_file_location('mmlstride_setup', REPO / 'setup.py')
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return ['sm_' + arch.replace('.', '') for arch in setup.DEFAULT_CUDA_ARCHS]


@pytest.mark.parametrize('arch', default_archs())
def test_kernels_compile(arch, tmp_path):
    """The kernels compile for every architecture of the default list, warnings as errors."""
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


def ptx_kernels(tmp_path):
    """The PTX of every kernel instantiation of tests/cuda/instantiate_kernels.cu (sm_80), by
    demangled name without its parameter list."""
    ptx = tmp_path / 'kernels.ptx'
    compile_ok([NVCC, '-std=c++17', *cpp_extension.COMMON_NVCC_FLAGS, '-arch=sm_80', '-ptx',
                '-I', str(REPO / 'csrc'), str(REPO / 'tests' / 'cuda' / 'instantiate_kernels.cu'),
                '-o', str(ptx)])
    bodies = re.split(r'\n(?=\.visible \.entry|\.entry)', ptx.read_text())[1:]
    names = [re.search(r'\.entry\s+(\S+)\(', body).group(1) for body in bodies]
    demangled = subprocess.run([CXXFILT], input='\n'.join(names), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    return {name.split('(')[0].removeprefix('void '): body
            for name, body in zip(demangled, bodies)}


def instructions(body, pattern):
    """The instructions of a PTX body whose opcode matches ``pattern``."""
    opcodes = re.findall(r'^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)', body, re.MULTILINE)
    return [opcode for opcode in opcodes if re.search(pattern, opcode)]


# What float64 work a float, half or bfloat16 kernel may do: the stride gradient's final
# reduction accumulates the per-block float32 partials in float64 (sum_block_partials).
FLOAT64_MEMORY = re.compile(r'^(ld|st)\.')


def test_low_precision_kernels_do_float32_sampling_math(tmp_path):
    """The per-element kernels of float, half and bfloat16 do no float64 arithmetic (it runs
    at 1/64 of the float32 rate on most GPUs): im2col and the deterministic gather have no
    .f64 instruction at all; the backward kernels only the float64 accumulator of the stride
    gradient's final sum (add, convert from float32, loads and stores). Sample positions
    come from tables that ls_conv_tables_kernel computes once per call in float64. The
    per-element index arithmetic has no integer division (the gather has one per thread,
    and the compiler one per thread for the grid-stride loop's trip count)."""
    require(NVCC is not None, 'nvcc (the CUDA toolkit)')
    require(CXXFILT is not None, 'c++filt (binutils)')
    kernels = ptx_kernels(tmp_path)
    low_precision = [name for name in kernels if re.search(r'<(float|__half|__nv_bfloat16),', name)
                     and 'tables_kernel' not in name]
    assert len(low_precision) == 3 * 2 * 14, sorted(kernels)  # 3 dtypes x 2 index types x 14
    for name in low_precision:
        float64 = instructions(kernels[name], r'\.f64')
        if 'backward_kernel' in name and re.search(r', (true|false), true, ', name):
            arithmetic = [op for op in float64 if not FLOAT64_MEMORY.match(op)]
            assert set(arithmetic) <= {'add.f64', 'cvt.f64.f32', 'mov.f64'}, (name, arithmetic)
        else:
            assert not float64, (name, float64)
        divisions = instructions(kernels[name], r'^(div|rem)\.[su](32|64)$')
        if 'fused' in name:  # once per block, for its tile: (split,) group, tile_m, tile_n
            allowed = 6 if 'weight_gradient' in name else 4
        else:
            allowed = (2 if 'input_gradient' in name else 1) * (2 if ', long' in name else 1)
        assert len(divisions) <= allowed, (name, divisions)


def test_fused_kernels_multiply_on_the_tensor_cores(tmp_path):
    """On sm_80 the fused sampling GEMMs of float16 and bfloat16 multiply with warp matrix
    instructions and those of float32 and float64 with fused multiply-adds; none has a
    per-element integer division (test above) or keeps more than the 48 KiB of static shared
    memory a block may have."""
    require(NVCC is not None, 'nvcc (the CUDA toolkit)')
    require(CXXFILT is not None, 'c++filt (binutils)')
    kernels = ptx_kernels(tmp_path)
    fused = [name for name in kernels if 'fused_kernel' in name]
    assert len(fused) == 4 * 2 * 2, sorted(kernels)
    for name in fused:
        tensor_cores = instructions(kernels[name], r'^(wmma\.mma|mma)\.sync')
        if re.search(r'<(__half|__nv_bfloat16),', name):
            assert tensor_cores, name
        else:
            assert not tensor_cores and instructions(kernels[name], r'^fma\.rn\.f(32|64)$'), name
        shared = re.findall(r'\.shared\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]', kernels[name])
        assert shared and sum(map(int, shared)) <= 48 * 1024, (name, shared)


# The CUDA toolkits of the torch builds mmlstride supports (torch 2.1: 11.8 and 12.1), whose
# headers tools/setup_env.sh installs from PyPI's nvidia-cuda-runtime and nvidia-cuda-nvcc
# wheels into <venv>/cuda-headers/<version> (no compiler there: nvcc itself is not on PyPI).
OLD_TOOLKITS = ['11.8', '12.1']
# Names the C++ compiler or the C library define, not the toolkit.
NOT_FROM_THE_TOOLKIT = {'__restrict__', '__int128', '__func__', '__LINE__', '__FILE__',
                        '__assert_fail', '__CUDA_ARCH__', '__CUDACC__'}


def cuda_names(source: str):
    """The CUDA names a source uses (``__x``, ``atomicX``, ``cudaX``), comments left out."""
    code = re.sub(r'//[^\n]*|/\*.*?\*/', '', source, flags=re.DOTALL)
    return set(re.findall(r'\b(__[A-Za-z]\w*|atomic[A-Z]\w*|cuda[A-Z]\w*)\b', code))


def declared_in(names, include_dirs):
    """The subset of ``names`` that appear as a whole word in the headers under
    ``include_dirs``."""
    text = '\n'.join(path.read_text(errors='replace') for directory in include_dirs
                     for path in directory.rglob('*') if path.suffix in ('.h', '.hpp'))
    return {name for name in names if re.search(rf'\b{re.escape(name)}\b', text)}


@pytest.mark.parametrize('version', OLD_TOOLKITS)
def test_cuda_code_uses_nothing_newer_than_old_toolkits(version):
    """Every CUDA function, type and qualifier the kernels and launchers use is declared in
    the headers of CUDA 11.8 and 12.1, the toolkits of torch 2.1's CUDA builds: a newer-only
    intrinsic fails here (nvcc 13 compiles them above)."""
    import sys
    root = Path(sys.prefix) / 'cuda-headers' / version / 'nvidia'
    require(root.is_dir(), f"CUDA {version}'s headers ({root}, tools/setup_env.sh)")
    include_dirs = [root / 'cuda_runtime' / 'include', root / 'cuda_nvcc' / 'include']
    sources = sorted((REPO / 'csrc' / 'common' / 'cuda').glob('*.cuh')) + sorted(
        (REPO / 'csrc' / 'pytorch' / 'cuda').glob('*.cu'))
    used = set().union(*(cuda_names(path.read_text()) for path in sources))
    assert {'atomicAdd', '__syncthreads', '__nv_bfloat16', 'cudaStream_t'} <= used
    wanted = used - NOT_FROM_THE_TOOLKIT
    assert sorted(wanted - declared_in(wanted, include_dirs)) == []

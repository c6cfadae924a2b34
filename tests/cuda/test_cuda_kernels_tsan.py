"""The cooperation of threads and blocks in the CUDA kernels, checked by ThreadSanitizer on the
CPU emulation (tests/cuda/emulation, blocks at once on a pool of workers, CUDA's memory
semantics): a build of the emulated kernels with -fsanitize=thread runs a representative set of
calls (tests/cuda/emulation/tsan_cases.cpp) and must draw no report; and the races that matter
most, each planted in a copy of the kernels, must each draw one."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require
from test_cuda_kernels_emulated import EMULATION, REPO, cuda_include_dir

KERNEL_HEADER = Path('common') / 'cuda' / 'ls_conv_cuda_kernel.cuh'
FUSED_HEADER = Path('common') / 'cuda' / 'ls_conv_cuda_fused.cuh'

# (the line or lines of the kernel header, what they become, a pattern of the function the
# report names, and the header when not the kernel header)
PLANTED_RACES = {
    'fence before the ticket removed': (
        '      __threadfence();  // the partials are visible before this block counts as done\n',
        '', 'sum_block_partials'),
    '__syncthreads after the ticket removed': (
        '      last_block = atomicAdd(s.blocks_done, 1u) == gridDim.x - 1;\n    }\n'
        '    __syncthreads();\n',
        '      last_block = atomicAdd(s.blocks_done, 1u) == gridDim.x - 1;\n    }\n',
        'ls_conv_backward_kernel'),
    'input gradient atomicAdd made a plain +=': (
        'atomicAdd(gim + h.low * t.width + w.low, grad * h.weight_low * w.weight_low);',
        'gim[h.low * t.width + w.low] += grad * h.weight_low * w.weight_low;',
        'ls_conv_backward_kernel'),
    "__syncthreads of the block tree sum's loop removed": (
        '      }\n    }\n    __syncthreads();\n  }\n}', '      }\n    }\n  }\n}', 'block_tree_sum'),
    'counter re-armed by a plain store': (
        'if (threadIdx.x == 0) atomicExch(s.blocks_done, 0u);',
        'if (threadIdx.x == 0) *s.blocks_done = 0;', 'ls_conv_backward_kernel'),
    "fused forward's __syncthreads after each step's product removed": (
        '    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);\n'
        '    __syncthreads();  // the tiles are read before the next step overwrites them\n',
        '    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);\n',
        'fused_kernel|BlockProduct|wmma', FUSED_HEADER),
    "fused forward's __syncthreads before its epilogue removed": (
        '  product.stage(c_tile, Layout::kLdC);\n  __syncthreads();\n  if (!in_batch) return;',
        '  product.stage(c_tile, Layout::kLdC);\n  if (!in_batch) return;',
        'fused_kernel|BlockProduct|wmma', FUSED_HEADER),
    "fused weight gradient's __syncthreads before each step's product removed": (
        '      b_tile[kk * Layout::kLdB + column] = value;\n    }\n    __syncthreads();\n'
        '    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);\n    __syncthreads();\n'
        '  }\n  product.stage(c_tile, Layout::kLdC);\n  __syncthreads();\n  if (!in_reduction)',
        '      b_tile[kk * Layout::kLdB + column] = value;\n    }\n'
        '    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);\n    __syncthreads();\n'
        '  }\n  product.stage(c_tile, Layout::kLdC);\n  __syncthreads();\n  if (!in_reduction)',
        'fused_kernel|BlockProduct|wmma', FUSED_HEADER),
}


def build_tsan_cases(csrc: Path, output: Path) -> Path:
    """tsan_cases.cpp and the emulated kernels of ``csrc``, built with ThreadSanitizer."""
    include = cuda_include_dir()
    compiler = shutil.which('c++')
    require(include is not None, "the CUDA toolkit's headers (cuda_fp16.h)")
    require(compiler is not None, 'a C++ compiler (c++)')
    result = subprocess.run(
        [compiler, '-std=c++20', '-O1', '-g', '-Wall', '-Werror', '-fsanitize=thread', '-pthread',
         f'-I{include}', f'-I{EMULATION}', f'-I{csrc}', str(EMULATION / 'emulated_kernels.cpp'),
         str(EMULATION / 'tsan_cases.cpp'), '-o', str(output)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return output


def run_tsan_cases(program: Path, *args: str) -> subprocess.CompletedProcess:
    env = {'TSAN_OPTIONS': 'halt_on_error=0 exitcode=66 history_size=4'}
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=900,
                          env=env)


def test_kernels_draw_no_report(tmp_path):
    result = run_tsan_cases(build_tsan_cases(REPO / 'csrc', tmp_path / 'tsan_cases'))
    assert 'ThreadSanitizer' not in result.stderr, result.stderr[-6000:]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == '244 calls, 0 failed'


@pytest.mark.parametrize('race', list(PLANTED_RACES))
def test_planted_race_is_reported(race, tmp_path):
    before, after, function, *where = PLANTED_RACES[race]
    csrc = tmp_path / 'csrc'
    shutil.copytree(REPO / 'csrc', csrc)
    header = csrc / (where[0] if where else KERNEL_HEADER)
    text = header.read_text()
    assert text.count(before) == 1, f'the planted race no longer matches the kernels: {race}'
    header.write_text(text.replace(before, after))
    result = run_tsan_cases(build_tsan_cases(csrc, tmp_path / 'tsan_cases'), 'quick')
    reports = re.findall(r'SUMMARY: ThreadSanitizer: data race .* in (.*)', result.stderr)
    assert result.returncode == 66 and any(re.search(function, report) for report in reports), \
        result.stderr[-3000:]

"""The CUDA kernels of csrc/common/cuda, run on the CPU through a stand-in for the CUDA execution
model (tests/cuda/emulation: blocks at once on a pool of workers, the threads of a block
interleaved at its barriers, both in orders drawn from a seed that changes with each test):
the sampling tables made from the stride on the "device" and its check, the index arithmetic,
grid-stride loops, block reductions (the last block's sum of the stride gradient), atomics and
dtype conversions against an autograd reference, and the same results under any schedule, on
machines without a GPU. tests/cuda/test_cuda_kernels_tsan.py checks the same kernels for races;
launchers and streams are left to tests/cuda/test_cuda.py on a GPU."""
import ctypes
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from conftest import require
from mmlstride.testing import Case, interpolation_matrix, random_case

REPO = Path(__file__).resolve().parents[2]
EMULATION = REPO / 'tests' / 'cuda' / 'emulation'
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
THREADS = 256  # cuda::kThreads


def cuda_include_dir():
    """The CUDA toolkit's include directory (for cuda_fp16.h and friends), or None."""
    candidates = [os.environ.get('CUDA_HOME'), '/usr/local/cuda']
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    for root in candidates:
        if root and (Path(root) / 'include' / 'cuda_fp16.h').exists():
            return Path(root) / 'include'
    return None


@pytest.fixture(scope='module')
def kernels(tmp_path_factory):
    include = cuda_include_dir()
    compiler = shutil.which('c++')
    require(include is not None, "the CUDA toolkit's headers (cuda_fp16.h)")
    require(compiler is not None, 'a C++ compiler (c++)')
    library = tmp_path_factory.mktemp('emulation') / 'emulated_kernels.so'
    result = subprocess.run(
        [compiler, '-std=c++20', '-O1', '-Wall', '-Werror', '-shared', '-fPIC', '-pthread',
         f'-I{include}', f'-I{EMULATION}', f'-I{REPO / "csrc"}',
         str(EMULATION / 'emulated_kernels.cpp'), '-o', str(library)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return ctypes.CDLL(str(library))


@pytest.fixture(autouse=True)
def schedule(request, kernels):
    """A schedule of its own for each test (4 workers, a seed from its name)."""
    kernels.emulated_schedule(ctypes.c_uint(zlib.crc32(request.node.nodeid.encode())), 4)


def pointer(tensor):
    return ctypes.c_void_p(tensor.data_ptr() if tensor is not None else 0)


def geometry_arguments(case):
    """The geometry, stride and phase (None when the case has none) as the entry points take
    them."""
    n, c, h, w = case.input.shape
    ints = [c, h, w, *case.weight.shape[2:], *case.padding, *case.dilation, *case.output_size]
    stride = case.stride.detach().double().tolist()
    phase = None if case.phase is None else \
        (ctypes.c_double * 2)(*case.phase.detach().double().tolist())
    return (ctypes.c_int64 * 11)(*ints), (ctypes.c_double * 2)(*stride), phase


def phase_of(case):
    """The case's phase in float64 as a new leaf (zeros when it has none: the kernels then
    sample without one, and still reduce its gradient)."""
    phase = torch.zeros(2, dtype=torch.float64) if case.phase is None else case.phase.detach()
    return phase.double().clone().requires_grad_()


def reference_columns(input, stride, case, row_begin, row_end, phase=None):
    """The tile's columns (C*kh*kw, rows*out_w) by separable interpolation matrices (MMCV's
    bilinear rule, derivatives from the right at pixel positions: mmlstride.testing);
    differentiable in input, stride and phase (default: the case's)."""
    _, channels, height, width = input.shape
    kh, kw = case.weight.shape[2:]
    out_h, out_w = case.output_size
    rows = torch.arange(row_begin, row_end)
    image, a = rows // out_h, rows % out_h
    tap_h = torch.arange(kh, dtype=torch.float64) * case.dilation[0]
    tap_w = torch.arange(kw, dtype=torch.float64) * case.dilation[1]
    if phase is None:
        phase = phase_of(case).detach()
    pos_h = a.double()[:, None] * stride[0] + phase[0] - case.padding[0] + tap_h  # (rows, kh)
    b = torch.arange(out_w, dtype=torch.float64)
    pos_w = tap_w[:, None] + b[None, :] * stride[1] + phase[1] - case.padding[1]  # (kw, out_w)
    weight_h = interpolation_matrix(pos_h, height)
    weight_w = interpolation_matrix(pos_w, width)
    columns = torch.einsum('riy,rcyx,jbx->cijrb', weight_h, input[image], weight_w)
    return columns.reshape(channels * kh * kw, (row_end - row_begin) * out_w)


def random_tile(seed, phase=False):
    """A random case in float64 (with a phase when ``phase``) and a random tile of its output
    rows."""
    case = random_case(seed, phase=phase)
    total = case.input.shape[0] * case.output_size[0]
    rng = random.Random(seed)
    row_begin = rng.randrange(total)
    return case, row_begin, rng.randint(row_begin + 1, total)


TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3,
             torch.bfloat16: 8e-3}


def assert_close(actual, expected, tolerance, name):
    scale = expected.abs().max().item() or 1.0
    error = (actual.double() - expected).abs().max().item() / scale
    assert error < tolerance, f'{name}: relative error {error:.2e}'


@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('dtype', list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize('seed', range(6))
def test_im2col_kernel(kernels, seed, dtype, index64, phase):
    case, row_begin, row_end = random_tile(seed, phase)
    input = case.input.detach().to(dtype)
    expected = reference_columns(input.double(), case.stride.detach(), case, row_begin, row_end)
    columns = torch.full(expected.shape, float('nan'), dtype=dtype)  # every element must be written
    ints, stride, phase_values = geometry_arguments(case)
    blocks = 1 + seed % 3  # grid-stride loops over several passes
    assert kernels.emulated_im2col(DTYPE_CODES[dtype], int(index64), pointer(input), ints, stride,
                                   phase_values, ctypes.c_int64(row_begin), ctypes.c_int64(row_end),
                                   pointer(columns), ctypes.c_uint(blocks)) == 0
    assert_close(columns, expected, TOLERANCE[dtype], 'columns')


# Strides that put samples exactly on pixels (kinks), where the kernels must take the
# derivative from the right (and, at exactly -1, MMCV's 0: the reference's rule too).
PIXEL_STRIDES = [(2.0, 2.0), (1.0, 1.0), (1.5, 3.0)]


@pytest.mark.parametrize('flags', [1, 2, 3, 5, 6, 7, 10, 11, 14, 15],
                         ids=['input', 'stride', 'input+stride', 'input+columns',
                              'stride+columns', 'input+stride+columns', 'stride+phase',
                              'input+stride+phase', 'stride+phase+columns', 'all'])
@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('dtype', list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize('seed', range(4))
def test_backward_kernel(kernels, seed, dtype, index64, flags):
    """Odd seeds sample with a phase."""
    check_backward_kernel(kernels, seed, dtype, index64, flags, phase=seed % 2 == 1)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize('stride', PIXEL_STRIDES, ids=str)
@pytest.mark.parametrize('seed', range(4))
def test_backward_kernel_on_pixels(kernels, seed, stride, dtype):
    """Without a phase (with one, samples leave the pixels)."""
    check_backward_kernel(kernels, seed, dtype, False, 15, pixel_stride=stride)


def check_backward_kernel(kernels, seed, dtype, index64, flags, pixel_stride=None,
                          phase=False):
    case, row_begin, row_end = random_tile(seed + 100, phase)
    if pixel_stride is not None:
        case.stride = torch.tensor(pixel_stride, dtype=torch.float64)
    input = case.input.detach().to(dtype)
    input64 = input.double().requires_grad_()
    stride64 = case.stride.detach().clone().requires_grad_()
    phase64 = phase_of(case)
    columns64 = reference_columns(input64, stride64, case, row_begin, row_end, phase64)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    grad_columns = torch.randn(columns64.shape, generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64).to(accumulate)
    expected_input, expected_stride, expected_phase = torch.autograd.grad(
        (columns64 * grad_columns.double()).sum(), (input64, stride64, phase64))

    blocks = 1 + seed % 3
    want_input, want_stride, want_columns = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    want_phase = bool(flags & 8)
    grad_input = torch.zeros(input.shape, dtype=accumulate) if want_input else None
    stride_sum = torch.zeros(4, dtype=torch.float64)
    columns = torch.full(columns64.shape, float('nan'), dtype=dtype) if want_columns else None
    ints, stride, phase_values = geometry_arguments(case)
    # 0: the kernel ran, and its last block re-armed the block counter for the next tile.
    assert kernels.emulated_backward(
        DTYPE_CODES[dtype], int(index64), flags, pointer(grad_columns), pointer(input), ints,
        stride, phase_values, ctypes.c_int64(row_begin), ctypes.c_int64(row_end),
        pointer(grad_input), pointer(stride_sum), pointer(columns), ctypes.c_uint(blocks)) == 0
    # The gradients are computed in float32 or float64 from the same rounded values.
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    if want_input:
        assert_close(grad_input, expected_input, tolerance, 'grad_input')
    if want_stride:
        assert_close(stride_sum[:2], expected_stride, tolerance, 'stride gradient')
    else:
        assert not stride_sum[:2].any()
    if want_phase:  # with the stride's (0 phase: still reduced)
        assert_close(stride_sum[2:], expected_phase, tolerance, 'phase gradient')
    else:  # not reduced: the stride's work alone
        assert not stride_sum[2:].any()
    if want_columns:
        assert_close(columns, columns64.detach(), TOLERANCE[dtype], 'columns')


@pytest.mark.parametrize('stride', [None, (1e-12, 1e9), (0.3, 0.25)],
                         ids=['random', 'extreme', 'dense'])
@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('dtype', list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize('seed', range(8))
def test_input_gradient_kernel(kernels, seed, dtype, index64, stride):
    """The deterministic gather gives the scatter's input gradient, for tiles of whole and
    partial images and strides far from 1 (odd seeds with a phase); it adds to grad_input."""
    case, row_begin, row_end = random_tile(seed + 200, phase=seed % 2 == 1)
    if stride is not None:
        case.stride = torch.tensor(stride, dtype=torch.float64)
    input64 = case.input.detach().to(dtype).double().requires_grad_()
    columns64 = reference_columns(input64, case.stride.detach(), case, row_begin, row_end)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    grad_columns = torch.randn(columns64.shape, generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64).to(accumulate)
    expected, = torch.autograd.grad((columns64 * grad_columns.double()).sum(), input64)
    earlier = torch.randn(input64.shape, generator=torch.Generator().manual_seed(seed + 1),
                          dtype=torch.float64)
    grad_input = earlier.to(accumulate, copy=True)  # what earlier tiles added
    ints, stride, phase = geometry_arguments(case)
    assert kernels.emulated_input_gradient(
        DTYPE_CODES[dtype], int(index64), pointer(grad_columns), ints, stride, phase,
        ctypes.c_int64(row_begin), ctypes.c_int64(row_end), pointer(grad_input),
        ctypes.c_uint(1 + seed % 3)) == 0
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(grad_input.double() - earlier.to(accumulate).double(), expected, tolerance,
                 'grad_input')


# The launch layer (csrc/common/cuda/ls_conv_cuda_launch.cuh): the decisions the CUDA
# launchers make, run on the emulation, with a record of every launch.
KINDS = {0: 'im2col', 1: 'backward', 2: 'input_gradient', 3: 'tables'}
INPUT, STRIDE, COLUMNS, PHASE = 1, 2, 4, 8
INT32_MAX = 2 ** 31 - 1


def launch_tile_case(phase=None):
    """Two images; the tile [3, 13) of their 16 output rows ends one image and starts the
    next (two partial images), and has enough columns for 15 blocks of 256 threads. With
    the given phase (a pair), if any."""
    gen = torch.Generator().manual_seed(7)
    case = Case(input=torch.randn(2, 3, 11, 12, generator=gen, dtype=torch.float64),
                weight=torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64),
                stride=torch.tensor([1.37, 0.83], dtype=torch.float64), bias=None,
                padding=(1, 1), dilation=(1, 1), groups=1, output_size=(8, 14),
                phase=None if phase is None else torch.tensor(phase, dtype=torch.float64))
    return case, 3, 13


def recorded_launches(record, count):
    assert 0 < count <= len(record) // 4
    return [(KINDS[int(record[4 * k])], int(record[4 * k + 1]), int(record[4 * k + 2]),
             int(record[4 * k + 3])) for k in range(count)]


def test_index_width_decision(kernels):
    fits = kernels.emulated_fits_int32
    fits.argtypes = [ctypes.c_int64] * 4
    assert fits(INT32_MAX, 0, 0, 0) and not fits(INT32_MAX + 1, 0, 0, 0)  # input elements
    assert fits(0, INT32_MAX - THREADS, 1, 0)  # the grid-stride loop's last increment
    assert not fits(0, INT32_MAX - THREADS + 1, 1, 0)
    assert not fits(0, 0, 0, INT32_MAX + 1)  # output rows
    blocks = kernels.emulated_grid_blocks
    blocks.argtypes, blocks.restype = [ctypes.c_int64, ctypes.c_int], ctypes.c_int64
    assert [blocks(0, 4), blocks(THREADS, 4), blocks(THREADS + 1, 4), blocks(10 ** 9, 4)] == \
        [1, 1, 2, 4 * 32]


def tiled_reference(input64, stride64, phase64, case, bounds):
    """The columns of consecutive tiles [bounds[k], bounds[k + 1]), each tile's matrix after
    the previous one's (as the host code's tile buffers hold them), flattened."""
    return torch.cat([reference_columns(input64, stride64, case, begin, end, phase64).flatten()
                      for begin, end in zip(bounds[:-1], bounds[1:])])


@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('deterministic', [False, True], ids=['atomic', 'deterministic'])
@pytest.mark.parametrize('want', [1, 2, 3, 5, 6, 7, 8, 10, 15],
                         ids=['input', 'stride', 'input+stride', 'input+columns',
                              'stride+columns', 'input+stride+columns', 'phase', 'stride+phase',
                              'all'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
def test_backward_tile_launches(kernels, dtype, want, deterministic, index64):
    """The kernels launched for the gradients asked for (the tables first, then the variant,
    scatter or gather of the input gradient, the index width) and what they compute: the
    stride and phase gradients summed over every block by the last one, with no launch of
    their own; the phase's only when asked for, and then the stride's with it (one
    reduction). (float32 samples with a phase.)"""
    case, row_begin, row_end = launch_tile_case(
        phase=(0.61, -1.27) if dtype == torch.float32 else None)
    input = case.input.detach().to(dtype)
    input64 = input.double().requires_grad_()
    stride64 = case.stride.detach().clone().requires_grad_()
    phase64 = phase_of(case)
    columns64 = reference_columns(input64, stride64, case, row_begin, row_end, phase64)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    grad_columns = torch.randn(columns64.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64).to(accumulate)
    expected_input, expected_stride, expected_phase = torch.autograd.grad(
        (columns64 * grad_columns.double()).sum(), (input64, stride64, phase64))
    multiprocessors = 1  # at most 32 blocks
    grad_input = torch.zeros(input.shape, dtype=accumulate)
    stride_sum = torch.full((4, ), float('nan'), dtype=torch.float64)
    columns = torch.full(columns64.shape, float('nan'), dtype=dtype)
    record = (ctypes.c_int64 * 64)()
    ints, stride, phase = geometry_arguments(case)
    count = kernels.emulated_backward_tile(
        DTYPE_CODES[dtype], want, int(deterministic), multiprocessors, pointer(grad_columns),
        pointer(input), ctypes.c_int64(INT32_MAX + 1 if index64 else input.numel()), ints, stride,
        phase, ctypes.c_int64(row_begin), ctypes.c_int64(row_end), 1, pointer(grad_input),
        pointer(stride_sum), pointer(columns), record, 16)
    launches = recorded_launches(record, count)

    assert launches[0] == ('tables', 8, 0, 1)  # the stride read once, on the device
    scatter = bool(want & INPUT) and not deterministic
    reduced = STRIDE if want & (STRIDE | PHASE) else 0
    expected_variant = (INPUT if scatter else 0) | reduced | (want & PHASE) | (want & COLUMNS)
    passes = [launch for launch in launches if launch[0] in ('backward', 'im2col')]
    if scatter or reduced:
        assert [(kind, variant) for kind, _, variant, _ in passes] == [('backward',
                                                                        expected_variant)]
        assert passes[0][3] == 15  # 3780 column elements
    else:  # the gathered input gradient, and the columns if asked for
        assert [kind for kind, *_ in passes] == (['im2col'] if want & COLUMNS else [])
    gathers = [launch for launch in launches if launch[0] == 'input_gradient']
    assert len(gathers) == (2 if want & INPUT and deterministic else 0)
    assert len(launches) == 1 + len(passes) + len(gathers)
    widths = {width for kind, width, *_ in launches if kind != 'tables'}
    assert widths == {8 if index64 else 4}

    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    if want & INPUT:
        assert_close(grad_input, expected_input, tolerance, 'grad_input')
    else:
        assert not grad_input.any()
    if reduced:
        assert_close(stride_sum[:2], expected_stride, tolerance, 'stride gradient')
    else:
        assert stride_sum[:2].tolist() == [0.0] * 2  # zeroed by the tables kernel
    if want & PHASE:
        assert_close(stride_sum[2:], expected_phase, tolerance, 'phase gradient')
    else:
        assert stride_sum[2:].tolist() == [0.0] * 2
    if want & COLUMNS:
        assert_close(columns, columns64.detach(), TOLERANCE[dtype], 'columns')
    else:
        assert columns.isnan().all()


@pytest.mark.parametrize('deterministic', [False, True], ids=['atomic', 'deterministic'])
@pytest.mark.parametrize('tiles', [2, 3, 7])
def test_tiles_accumulate_gradients(kernels, tiles, deterministic):
    """Consecutive tiles of one call add their input, stride and phase gradients: the last
    block of each tile's backward re-arms the block counter for the next one."""
    case, row_begin, row_end = launch_tile_case(phase=(-0.45, 0.9))
    step = (row_end - row_begin) // tiles  # the last tile takes the rest
    bounds = [row_begin + k * step for k in range(tiles)] + [row_end]
    input64 = case.input.detach().clone().requires_grad_()
    stride64 = case.stride.detach().clone().requires_grad_()
    phase64 = phase_of(case)
    columns64 = tiled_reference(input64, stride64, phase64, case, bounds)
    grad_columns = torch.randn(columns64.shape, generator=torch.Generator().manual_seed(2),
                               dtype=torch.float64)
    expected_input, expected_stride, expected_phase = torch.autograd.grad(
        (columns64 * grad_columns).sum(), (input64, stride64, phase64))
    grad_input = torch.zeros(input64.shape, dtype=torch.float64)
    stride_sum = torch.zeros(4, dtype=torch.float64)
    record = (ctypes.c_int64 * 64)()
    ints, stride, phase = geometry_arguments(case)
    count = kernels.emulated_backward_tile(
        DTYPE_CODES[torch.float64], INPUT | STRIDE | PHASE, int(deterministic), 1,
        pointer(grad_columns),
        pointer(input64.detach()), ctypes.c_int64(input64.numel()), ints, stride, phase,
        ctypes.c_int64(row_begin), ctypes.c_int64(row_end), tiles, pointer(grad_input),
        pointer(stride_sum), None, record, 16)
    passes = [launch for launch in recorded_launches(record, min(count, 16))
              if launch[0] == 'backward']
    assert len(passes) == tiles
    assert_close(grad_input, expected_input, 1e-12, 'grad_input')
    assert_close(stride_sum[:2], expected_stride, 1e-12, 'stride gradient')
    assert_close(stride_sum[2:], expected_phase, 1e-12, 'phase gradient')


@pytest.mark.parametrize('deterministic', [False, True], ids=['atomic', 'deterministic'])
def test_same_gradients_under_any_schedule(kernels, deterministic):
    """Blocks in other orders and on 1 to 4 workers at once, the threads of each block in other
    orders: the stride and phase gradients (every block's partial summed by whichever block
    finishes last, in a fixed order) and the gathered input gradient repeat bit for bit; the
    scattered one (atomics in any order) to rounding."""
    case, row_begin, row_end = launch_tile_case(phase=(0.37, -0.8))
    input = case.input.detach()
    grad_columns = torch.randn(case.weight.shape[1] * case.weight.shape[2] * case.weight.shape[3]
                               * (row_end - row_begin) * case.output_size[1],
                               generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ints, stride, phase = geometry_arguments(case)
    results = []
    for seed, workers in [(0, 1), (1, 2), (2, 4), (3, 4), (4, 3)]:
        kernels.emulated_schedule(ctypes.c_uint(seed), workers)
        grad_input = torch.zeros(input.shape, dtype=torch.float64)
        stride_sum = torch.zeros(4, dtype=torch.float64)
        record = (ctypes.c_int64 * 64)()
        kernels.emulated_backward_tile(
            DTYPE_CODES[torch.float64], INPUT | STRIDE | PHASE, int(deterministic), 1,
            pointer(grad_columns), pointer(input), ctypes.c_int64(input.numel()), ints, stride,
            phase, ctypes.c_int64(row_begin), ctypes.c_int64(row_end), 2, pointer(grad_input),
            pointer(stride_sum), None, record, 16)
        results.append((grad_input, stride_sum))
    for grad_input, stride_sum in results[1:]:
        assert torch.equal(stride_sum, results[0][1])
        if deterministic:
            assert torch.equal(grad_input, results[0][0])
        else:
            assert_close(grad_input, results[0][0], 1e-13, 'grad_input')


@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
def test_im2col_tile_launch(kernels, index64):
    case, row_begin, row_end = launch_tile_case()
    input = case.input.detach()
    expected = reference_columns(input, case.stride.detach(), case, row_begin, row_end)
    columns = torch.full(expected.shape, float('nan'), dtype=torch.float64)
    record = (ctypes.c_int64 * 8)()
    ints, stride, phase = geometry_arguments(case)
    count = kernels.emulated_im2col_tile(
        DTYPE_CODES[torch.float64], 1, pointer(input),
        ctypes.c_int64(INT32_MAX + 1 if index64 else input.numel()), ints, stride, phase,
        ctypes.c_int64(row_begin), ctypes.c_int64(row_end), pointer(columns), record, 2)
    assert recorded_launches(record, count) == [('tables', 8, 0, 1),
                                                ('im2col', 8 if index64 else 4, 0, 15)]
    assert_close(columns, expected, 1e-12, 'columns')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize('blocks', [1, 255, 1000, 4224])  # 4224: 32 blocks x 132 SMs (H100)
def test_sum_partials(kernels, dtype, blocks):
    """The last block's sum of the per-block partials covers every block (the threads loop
    when blocks > 256), in float64, and adds to what earlier tiles left."""
    partials = torch.randn(blocks, 4, generator=torch.Generator().manual_seed(blocks),
                           dtype=torch.float64).to(dtype)
    earlier = torch.tensor([0.25, -0.5, 1.5, -2.0], dtype=torch.float64)
    stride_sum = earlier.clone()
    assert kernels.emulated_sum_partials(DTYPE_CODES[dtype], pointer(partials),
                                         ctypes.c_int64(blocks), pointer(stride_sum)) == 0
    expected = partials.double().sum(0) + earlier
    torch.testing.assert_close(stride_sum, expected, rtol=1e-13, atol=1e-13)


def emulated_tables(kernels, case, stride, stride_dtype=torch.float64, acc=torch.float64,
                    phase=None):
    """The tables kernel's output for `case` and stride values `stride` (and phase values
    `phase`, if any): h and w samples (low, high, weight_low, weight_high per entry), the
    sources and reach ranges, and whether the device-side assertion fired."""
    _, _, height, width = case.input.shape
    kh, kw = case.weight.shape[2:]
    out_h, out_w = case.output_size
    h = torch.empty(kh * out_h, 4, dtype=torch.float64)
    w = torch.empty(kw * out_w, 4, dtype=torch.float64)
    h_sources = torch.empty(kh * height, 2, dtype=torch.int64)
    w_sources = torch.empty(kw * width, 2, dtype=torch.int64)
    reach = torch.empty(out_h, 2, dtype=torch.int64)
    ints, *_ = geometry_arguments(case)
    stride_values = torch.tensor(stride, dtype=stride_dtype)
    phase_values = None if phase is None else torch.tensor(phase, dtype=stride_dtype)
    fired = kernels.emulated_tables(int(acc == torch.float64), int(stride_dtype == torch.float64),
                                    pointer(stride_values), pointer(phase_values), ints,
                                    pointer(h), pointer(w),
                                    pointer(h_sources), pointer(w_sources), pointer(reach))
    return h, w, h_sources, w_sources, reach, fired


@pytest.mark.parametrize('phase', [None, (0.3, -1.7), (-2.5, 4.0)], ids=str)
@pytest.mark.parametrize('stride', [(1.37, 0.83), (2.0, 1.0), (0.25, 3.5)], ids=str)
@pytest.mark.parametrize('stride_dtype', [torch.float32, torch.float64], ids=str)
def test_tables_kernel(kernels, stride, stride_dtype, phase):
    """The tables hold each sample's neighbours and weights (MMCV's rule, float64 positions
    from the stride and phase in their dtype); the sources of each input pixel hold every
    output index whose sample gives it weight, and the reach of each output row every input
    row its samples give weight to."""
    case, _, _ = launch_tile_case()
    h, w, h_sources, w_sources, reach, fired = emulated_tables(kernels, case, stride,
                                                               stride_dtype, phase=phase)
    assert fired == 0
    _, _, height, width = case.input.shape
    kh, kw = case.weight.shape[2:]
    out_h, out_w = case.output_size
    s = torch.tensor(stride, dtype=stride_dtype).double()
    shift = torch.tensor(phase or (0.0, 0.0), dtype=stride_dtype).double()
    for table, sources, taps, outs, size, k in ((h, h_sources, kh, out_h, height, 0),
                                                (w, w_sources, kw, out_w, width, 1)):
        out = torch.arange(outs, dtype=torch.float64)
        tap = torch.arange(taps, dtype=torch.float64)[:, None]
        position = out * s[k] + shift[k] - case.padding[k] + tap * case.dilation[k]  # (taps, outs)
        weights = interpolation_matrix(position, size)  # (taps, outs, size)
        table = table.view(taps, outs, 4)
        low, high = table[..., 0].long(), table[..., 1].long()
        rebuilt = torch.zeros_like(weights)
        rebuilt.scatter_add_(2, low[..., None], table[..., 2:3])
        rebuilt.scatter_add_(2, high[..., None], table[..., 3:4])
        torch.testing.assert_close(rebuilt, weights, rtol=0, atol=1e-15)
        sources = sources.view(taps, size, 2)
        for t in range(taps):
            for pixel in range(size):
                givers = weights[t, :, pixel].nonzero().flatten().tolist()
                begin, end = sources[t, pixel].tolist()
                assert all(begin <= o < end for o in givers), (t, pixel, givers, begin, end)
    weights_h = interpolation_matrix(
        torch.arange(out_h, dtype=torch.float64)[:, None] * s[0] + shift[0] - case.padding[0] +
        torch.arange(kh, dtype=torch.float64) * case.dilation[0], height)  # (out_h, kh, H)
    for a in range(out_h):
        rows = weights_h[a].abs().sum(0).nonzero().flatten().tolist()
        begin, end = reach[a].tolist()
        assert all(begin <= y < end for y in rows), (a, rows, begin, end)


@pytest.mark.parametrize('stride', [(float('nan'), 1.0), (1.0, float('inf')), (0.0, 1.0),
                                    (1.0, -2.0), (-float('inf'), 1.0)], ids=str)
@pytest.mark.parametrize('stride_dtype', [torch.float32, torch.float64], ids=str)
def test_tables_kernel_asserts_on_invalid_stride(kernels, stride, stride_dtype):
    """A non-finite or non-positive stride stops the tables kernel with a device-side
    assertion (recorded by the emulation): the CUDA path checks it without a sync."""
    case, _, _ = launch_tile_case()
    *_, fired = emulated_tables(kernels, case, stride, stride_dtype, acc=torch.float32)
    assert fired == 1
    *_, fired = emulated_tables(kernels, case, (1.5, 0.5), stride_dtype, acc=torch.float32)
    assert fired == 0


@pytest.mark.parametrize('phase', [(float('nan'), 1.0), (1.0, float('inf')),
                                   (-float('inf'), 0.0)], ids=str)
@pytest.mark.parametrize('stride_dtype', [torch.float32, torch.float64], ids=str)
def test_tables_kernel_asserts_on_invalid_phase(kernels, phase, stride_dtype):
    """So does a non-finite phase; a finite one, negative or large, does not."""
    case, _, _ = launch_tile_case()
    *_, fired = emulated_tables(kernels, case, (1.5, 0.5), stride_dtype, phase=phase)
    assert fired == 1
    *_, fired = emulated_tables(kernels, case, (1.5, 0.5), stride_dtype, phase=(-3.0, 1e6))
    assert fired == 0


@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
def test_fast_divider(kernels, index64):
    """The kernels' division by multiplication gives n // d for every n in the index range,
    including the edges of the range and of each quotient."""
    divide = kernels.emulated_fast_divide
    divide.argtypes, divide.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64], \
        ctypes.c_int64
    largest = 2 ** 63 - 1 if index64 else INT32_MAX
    rng = random.Random(5)
    divisors = [1, 2, 3, 7, 9, 14, 25, 255, 256, 257, 3780, 65535, 65536, 10 ** 6 + 3,
                largest // 2, largest - 1, largest] + [rng.randrange(1, largest) for _ in range(40)]
    for d in divisors:
        numerators = {0, 1, d - 1, d, d + 1, largest, largest - 1, largest - largest % d,
                      largest - largest % d - 1} | {rng.randrange(0, largest) for _ in range(40)}
        for n in numerators:
            if 0 <= n <= largest:
                assert divide(int(index64), n, d) == n // d, (n, d)

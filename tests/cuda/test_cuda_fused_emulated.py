"""The fused sampling GEMMs of csrc/common/cuda/ls_conv_cuda_fused.cuh (the CUDA forward and
weight gradient with the columns gathered into shared memory, the product on the tensor cores
for float16 and bfloat16) run on the CPU emulation of tests/cuda/emulation, with its warp
matrix functions: every dtype and both index widths against the separable-interpolation
reference of the columns, tails of every tile dimension (output channels, pixels, reduction),
groups, several blocks per launch, and the launch layer's grid, index width and split of the
weight gradient's pixels."""
import ctypes
import random

import pytest
import torch

from mmlstride.testing import FRACTIONAL_STRIDES, Case, random_case
from test_cuda_kernels_emulated import (DTYPE_CODES, TOLERANCE, assert_close,  # noqa: F401
                                        geometry_arguments, kernels, pointer, reference_columns,
                                        schedule)

TILE_M, TILE_N = 64, 128  # cuda::kTileM, cuda::kTileN
FORWARD_FUSED, WEIGHT_GRADIENT_FUSED = 4, 5  # cuda::KernelKind
MULTIPROCESSORS = 2
# Element counts past int32: the launch layer then takes 64-bit indices.
HUGE = 1 << 32


def large_case(seed, groups=1, phase=False):
    """A case whose products span several tiles along every dimension: more output channels
    per group than kTileM, more pixels than kTileN, a reduction of many steps, each with a
    partial last tile."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    channels, out_channels = groups * rng.randint(13, 20), groups * rng.randint(65, 80)
    kernel = (rng.randint(2, 3), rng.randint(2, 3))
    size = (rng.randint(14, 20), rng.randint(14, 20))
    stride = [rng.choice(FRACTIONAL_STRIDES[2:5]) for _ in range(2)]
    case = Case(
        input=torch.randn(2, channels, *size, generator=gen, dtype=torch.float64),
        weight=torch.randn(out_channels, channels // groups, *kernel, generator=gen,
                           dtype=torch.float64),
        stride=torch.tensor(stride, dtype=torch.float64),
        bias=torch.randn(out_channels, generator=gen, dtype=torch.float64),
        padding=(1, 1), dilation=(1, rng.randint(1, 2)), groups=groups,
        output_size=(int(size[0] / stride[0]) + 1, int(size[1] / stride[1]) + 2))
    if phase:
        case.phase = torch.tensor([0.37, -0.61], dtype=torch.float64)
    return case


def all_columns(case, input):
    """The batch's columns (C * kh * kw, N * out_h * out_w) in float64 from ``input``, each
    rounded to input's dtype as the kernels round their samples."""
    total = input.shape[0] * case.output_size[0]
    columns = reference_columns(input.double(), case.stride.detach(), case, 0, total)
    return columns.to(input.dtype).double()


def reference_forward(case, input, weight, bias):
    """The forward in float64 from the dtype's values: per group, weight @ columns + bias."""
    batch = input.shape[0]
    out_channels = weight.shape[0]
    columns = all_columns(case, input).view(case.groups, -1, columns_count(case, batch))
    product = torch.bmm(weight.double().reshape(case.groups, out_channels // case.groups, -1),
                        columns).reshape(out_channels, batch, *case.output_size)
    if bias is not None:
        product = product + bias.double()[:, None, None, None]
    return product.transpose(0, 1)


def columns_count(case, batch):
    return batch * case.output_size[0] * case.output_size[1]


def run_forward(kernels, case, dtype, input_numel=None, with_bias=True):
    input = case.input.detach().to(dtype).contiguous()
    weight = case.weight.detach().to(dtype).contiguous()
    bias = case.bias.detach().to(dtype) if with_bias and case.bias is not None else None
    batch, out_channels = input.shape[0], weight.shape[0]
    output = torch.full((batch, out_channels, *case.output_size), float('nan'), dtype=dtype)
    ints, stride, phase = geometry_arguments(case)
    record = (ctypes.c_int64 * 256)()
    count = kernels.emulated_forward_fused(
        DTYPE_CODES[dtype], MULTIPROCESSORS, pointer(input),
        ctypes.c_int64(input_numel or input.numel()), pointer(weight), pointer(bias), ints,
        ctypes.c_int64(batch), ctypes.c_int64(out_channels), ctypes.c_int64(case.groups), stride,
        phase, pointer(output), record, 64)
    assert count != -2, 'a warp matrix function was called against its preconditions'
    assert count > 0
    return output, reference_forward(case, input, weight, bias), launches(record, count)


def launches(record, count):
    """The recorded launches as (kind, index bytes, variant, blocks), the tables' included."""
    return [tuple(record[4 * k:4 * k + 4]) for k in range(min(count, 64))]


def split_of(kernels, case, dtype):
    ints, _, _ = geometry_arguments(case)
    split = (ctypes.c_int64 * 2)()
    kernels.emulated_weight_gradient_split(
        ints, ctypes.c_int64(case.input.shape[0]), ctypes.c_int64(case.weight.shape[0]),
        ctypes.c_int64(case.groups), torch.empty((), dtype=dtype).element_size(),
        MULTIPROCESSORS, split)
    return split[0], split[1]


def run_weight_gradient(kernels, case, dtype, input_numel=None):
    gen = torch.Generator().manual_seed(len(case.output_size) + case.input.numel())
    input = case.input.detach().to(dtype).contiguous()
    batch, out_channels = input.shape[0], case.weight.shape[0]
    grad_output = torch.randn(batch, out_channels, *case.output_size, generator=gen,
                              dtype=torch.float64).to(dtype)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    splits, chunk = split_of(kernels, case, dtype)
    reduction = case.weight[0].numel()
    partial = torch.full((splits, out_channels, reduction), float('nan'), dtype=accumulate)
    ints, stride, phase = geometry_arguments(case)
    record = (ctypes.c_int64 * 256)()
    count = kernels.emulated_weight_gradient_fused(
        DTYPE_CODES[dtype], MULTIPROCESSORS, pointer(grad_output), pointer(input),
        ctypes.c_int64(input_numel or input.numel()), ints, ctypes.c_int64(batch),
        ctypes.c_int64(out_channels), ctypes.c_int64(case.groups), stride, phase,
        pointer(partial), record, 64)
    assert count != -2, 'a warp matrix function was called against its preconditions'
    assert count > 0
    pixels = columns_count(case, batch)
    columns = all_columns(case, input).view(case.groups, reduction, pixels)
    dy = grad_output.double().transpose(0, 1).reshape(case.groups, out_channels // case.groups,
                                                      pixels)
    expected = torch.bmm(dy, columns.transpose(1, 2)).reshape(out_channels, reduction)
    return partial, expected, (splits, chunk), launches(record, count)


def cases(phase):
    """Small random cases (one tile, partial along every dimension) and large ones."""
    return [random_case(seed, phase=phase) for seed in range(3)] + \
        [large_case(seed, groups=1 + seed % 2, phase=phase) for seed in range(2)]


@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('dtype', list(DTYPE_CODES), ids=str)
def test_forward_fused_kernel(kernels, dtype, index64, phase):
    for number, case in enumerate(cases(phase)):
        output, expected, record = run_forward(kernels, case, dtype,
                                               input_numel=HUGE if index64 else None)
        assert not output.isnan().any(), f'case {number}: an output element was not written'
        assert_close(output, expected, TOLERANCE[dtype], f'case {number} forward')
        kinds = [entry for entry in record if entry[0] == FORWARD_FUSED]
        assert [entry[1] for entry in kinds] == [8 if index64 else 4]


def test_forward_fused_grid(kernels):
    """One block per (group, channel tile, pixel tile): nothing more, nothing left out."""
    case = large_case(3, groups=2)
    _, _, record = run_forward(kernels, case, torch.float16)
    (entry,) = [e for e in record if e[0] == FORWARD_FUSED]
    group_out = case.weight.shape[0] // 2
    pixels = columns_count(case, case.input.shape[0])
    assert entry[3] == 2 * -(-group_out // TILE_M) * -(-pixels // TILE_N)


def test_forward_fused_without_bias(kernels):
    case = large_case(4)
    output, expected, _ = run_forward(kernels, case, torch.float64, with_bias=False)
    assert_close(output, expected, TOLERANCE[torch.float64], 'forward without bias')


@pytest.mark.parametrize('phase', [False, True], ids=['no_phase', 'phase'])
@pytest.mark.parametrize('index64', [False, True], ids=['int32', 'int64'])
@pytest.mark.parametrize('dtype', list(DTYPE_CODES), ids=str)
def test_weight_gradient_fused_kernel(kernels, dtype, index64, phase):
    for number, case in enumerate(cases(phase)):
        partial, expected, (splits, chunk), record = run_weight_gradient(
            kernels, case, dtype, input_numel=HUGE if index64 else None)
        assert not partial.isnan().any(), f'case {number}: a partial element was not written'
        assert_close(partial.sum(0), expected, TOLERANCE[dtype], f'case {number} weight gradient')
        kinds = [entry for entry in record if entry[0] == WEIGHT_GRADIENT_FUSED]
        assert [entry[1] for entry in kinds] == [8 if index64 else 4]


def test_weight_gradient_splits_cover_the_pixels(kernels):
    """The splits tile the batch's pixels in whole reduction steps, each of at least 512 pixels
    (but a batch with fewer), as many as fill the multiprocessors; each split's partial is its
    own pixels' product."""
    case = large_case(5)
    case.input = case.input.repeat(8, 1, 1, 1)  # 16 images: enough pixels for several splits
    pixels = columns_count(case, 16)
    partial, expected, (splits, chunk), _ = run_weight_gradient(kernels, case, torch.float32)
    assert splits > 1 and chunk % 32 == 0 and chunk >= 512
    assert (splits - 1) * chunk < pixels <= splits * chunk
    assert_close(partial.sum(0), expected, TOLERANCE[torch.float32], 'weight gradient')
    # Each split alone: the product over its own run of pixels.
    input = case.input.to(torch.float32)
    reduction = case.weight[0].numel()
    columns = all_columns(case, input)
    gen = torch.Generator().manual_seed(len(case.output_size) + case.input.numel())
    grad_output = torch.randn(16, case.weight.shape[0], *case.output_size, generator=gen,
                              dtype=torch.float64).float().double()
    dy = grad_output.transpose(0, 1).reshape(case.weight.shape[0], pixels)
    for split in range(splits):
        run = slice(split * chunk, min(pixels, (split + 1) * chunk))
        assert_close(partial[split], dy[:, run] @ columns[:reduction, run].T,
                     TOLERANCE[torch.float32], f'split {split}')


def test_small_batches_take_one_split(kernels):
    case = random_case(0)
    splits, chunk = split_of(kernels, case, torch.float16)
    assert splits == 1 and chunk >= columns_count(case, case.input.shape[0])

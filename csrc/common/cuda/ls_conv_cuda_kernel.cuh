// CUDA kernels of the learnable-stride convolution: bilinear im2col and the
// fused backward sampling pass (col2im onto the input gradient, the stride
// gradient reduced per block, and the columns for the weight gradient).
// Plain CUDA C++ with no torch header; the math is ls_conv_sampling.h's,
// shared with the CPU backend. Launchers: csrc/pytorch/cuda/ls_conv_cuda.cu.
//
// Layouts are those of csrc/pytorch/ls_conv_kernels.h: a tile holds the
// batch's output rows [row_begin, row_end) (row = image * out_h + a), and its
// columns matrix is (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w).
// Every element count is indexed in int64_t.
//
// Arithmetic runs in Accumulate<T>::type: float for float, half and bfloat16,
// double for double.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../ls_conv_sampling.h"

namespace mmlstride {
namespace cuda {

template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

// Threads per block of the backward kernel (its block reduction is sized by it).
constexpr int kBackwardThreads = 256;

// The (channel, tap, output pixel) of one element of a tile's columns matrix.
struct ColumnElement {
  int64_t c, i, j, image, a, b;
};

__device__ inline ColumnElement column_element(int64_t index, const LSConvGeometry& g,
                                               int64_t row_begin, int64_t ncols) {
  ColumnElement e;
  const int64_t column = index % ncols;
  const int64_t tap_row = index / ncols;
  e.b = column % g.out_w;
  const int64_t row = row_begin + column / g.out_w;
  e.image = row / g.out_h;
  e.a = row % g.out_h;
  e.j = tap_row % g.kernel_w;
  e.i = (tap_row / g.kernel_w) % g.kernel_h;
  e.c = tap_row / (g.kernel_w * g.kernel_h);
  return e;
}

template <typename Acc>
__device__ inline AxisSample<Acc> sample_h(const ColumnElement& e, const LSConvGeometry& g) {
  return axis_sample<Acc>(sample_position(e.a, e.i, g.stride_h, g.pad_h, g.dilation_h), g.height);
}

template <typename Acc>
__device__ inline AxisSample<Acc> sample_w(const ColumnElement& e, const LSConvGeometry& g) {
  return axis_sample<Acc>(sample_position(e.b, e.j, g.stride_w, g.pad_w, g.dilation_w), g.width);
}

__device__ inline void atomic_add(float* address, float value) { atomicAdd(address, value); }
__device__ inline void atomic_add(double* address, double value) { atomicAdd(address, value); }
__device__ inline void atomic_add(__half* address, float value) {
  atomicAdd(address, __float2half(value));
}
__device__ inline void atomic_add(__nv_bfloat16* address, float value) {
  atomicAdd(address, __float2bfloat16(value));
}

// Grid-stride loop over the elements of the tile's columns.
#define LSCONV_CUDA_KERNEL_LOOP(index, total)                                          \
  for (int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; index < (total); \
       index += int64_t(blockDim.x) * gridDim.x)

// columns <- bilinear samples of `input` at every (tap, output pixel) of the tile.
template <typename T>
__global__ void ls_conv_im2col_kernel(const T* __restrict__ input, LSConvGeometry g,
                                      int64_t row_begin, int64_t row_end, T* __restrict__ columns) {
  using Acc = typename Accumulate<T>::type;
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t total = g.channels * g.kernel_h * g.kernel_w * ncols;
  LSCONV_CUDA_KERNEL_LOOP(index, total) {
    const ColumnElement e = column_element(index, g, row_begin, ncols);
    const T* im = input + (e.image * g.channels + e.c) * g.height * g.width;
    columns[index] = T(bilinear_value(im, g.width, sample_h<Acc>(e, g), sample_w<Acc>(e, g)));
  }
}

// From the tile's columns gradient, one pass over its elements:
//   kInput:   adds each element's pull-back onto its four neighbours of grad_input
//             (atomicAdd: overlapping samples of different taps and pixels meet);
//   kStride:  reduces sum(grad * a * dX/dh) and sum(grad * b * dX/dw) per block, and
//             block b writes them to block_partials[2 * b] and [2 * b + 1] (no atomics;
//             the caller sums the partials);
//   kColumns: writes the tile's columns (as ls_conv_im2col_kernel) for the weight gradient.
// Launch with kBackwardThreads threads per block.
template <typename T, bool kInput, bool kStride, bool kColumns>
__global__ void __launch_bounds__(kBackwardThreads)
    ls_conv_backward_kernel(const T* __restrict__ grad_columns, const T* __restrict__ input,
                            LSConvGeometry g, int64_t row_begin, int64_t row_end, T* grad_input,
                            typename Accumulate<T>::type* __restrict__ block_partials,
                            T* __restrict__ columns) {
  using Acc = typename Accumulate<T>::type;
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t total = g.channels * g.kernel_h * g.kernel_w * ncols;
  const int64_t plane = g.height * g.width;
  Acc sum_h = Acc(0);
  Acc sum_w = Acc(0);
  LSCONV_CUDA_KERNEL_LOOP(index, total) {
    const ColumnElement e = column_element(index, g, row_begin, ncols);
    const AxisSample<Acc> h = sample_h<Acc>(e, g);
    const AxisSample<Acc> w = sample_w<Acc>(e, g);
    const int64_t plane_offset = (e.image * g.channels + e.c) * plane;
    const Acc grad = Acc(grad_columns[index]);
    if (kInput && grad != Acc(0)) {
      T* gim = grad_input + plane_offset;
      if (h.weight_low != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomic_add(gim + h.low * g.width + w.low, grad * h.weight_low * w.weight_low);
        if (w.weight_high != Acc(0))
          atomic_add(gim + h.low * g.width + w.high, grad * h.weight_low * w.weight_high);
      }
      if (h.weight_high != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomic_add(gim + h.high * g.width + w.low, grad * h.weight_high * w.weight_low);
        if (w.weight_high != Acc(0))
          atomic_add(gim + h.high * g.width + w.high, grad * h.weight_high * w.weight_high);
      }
    }
    if (kStride || kColumns) {
      const T* im = input + plane_offset;
      if (kStride) {
        sum_h += grad * Acc(e.a) * coordinate_weight_h(im, g.width, h, w);
        sum_w += grad * Acc(e.b) * coordinate_weight_w(im, g.width, h, w);
      }
      if (kColumns) columns[index] = T(bilinear_value(im, g.width, h, w));
    }
  }
  if (kStride) {
    __shared__ Acc shared_h[kBackwardThreads];
    __shared__ Acc shared_w[kBackwardThreads];
    shared_h[threadIdx.x] = sum_h;
    shared_w[threadIdx.x] = sum_w;
    __syncthreads();
    for (int half = kBackwardThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) {
        shared_h[threadIdx.x] += shared_h[threadIdx.x + half];
        shared_w[threadIdx.x] += shared_w[threadIdx.x + half];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      block_partials[2 * blockIdx.x] = shared_h[0];
      block_partials[2 * blockIdx.x + 1] = shared_w[0];
    }
  }
}

#undef LSCONV_CUDA_KERNEL_LOOP

}  // namespace cuda
}  // namespace mmlstride

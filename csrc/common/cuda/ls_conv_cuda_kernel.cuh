// CUDA kernels of the learnable-stride convolution: bilinear im2col, the fused
// backward sampling pass (col2im onto the input gradient, the stride gradient
// reduced per block, and the columns for the weight gradient), and the input
// gradient by gathering, for deterministic mode.
// Plain CUDA C++ with no torch header; the math is ls_conv_sampling.h's,
// shared with the CPU backend. Launchers: csrc/pytorch/cuda/ls_conv_cuda.cu.
//
// Layouts are those of csrc/pytorch/ls_conv_kernels.h: a tile holds the
// batch's output rows [row_begin, row_end) (row = image * out_h + a), and its
// columns matrix is (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w).
// Element indices have type Index: int32_t when every element count of the
// call fits in it (faster division), int64_t otherwise.
//
// Arithmetic runs in Accumulate<T>::type: float for float, half and bfloat16,
// double for double. The columns gradient comes in that type and the input
// gradient is accumulated in it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "../ls_conv_sampling.h"

namespace mmlstride {

// Explicit conversions for the half types (ls_conv_sampling.h's Convert).
template <>
struct Convert<float, __half> {
  LSCONV_HOST_DEVICE static float apply(__half v) { return __half2float(v); }
};
template <>
struct Convert<__half, float> {
  LSCONV_HOST_DEVICE static __half apply(float v) { return __float2half(v); }
};
template <>
struct Convert<float, __nv_bfloat16> {
  LSCONV_HOST_DEVICE static float apply(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct Convert<__nv_bfloat16, float> {
  LSCONV_HOST_DEVICE static __nv_bfloat16 apply(float v) { return __float2bfloat16(v); }
};

namespace cuda {

template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

// Threads per block of every kernel (the backward block reduction is sized by it).
constexpr int kThreads = 256;

// The (channel, tap, output pixel) of one element of a tile's columns matrix.
template <typename Index>
struct ColumnElement {
  Index c, i, j, image, a, b;
};

template <typename Index>
__device__ inline ColumnElement<Index> column_element(Index index, const LSConvGeometry& g,
                                                      Index row_begin, Index ncols) {
  const Index out_h = Index(g.out_h), out_w = Index(g.out_w);
  const Index kernel_h = Index(g.kernel_h), kernel_w = Index(g.kernel_w);
  ColumnElement<Index> e;
  const Index column = index % ncols;
  const Index tap_row = index / ncols;
  e.b = column % out_w;
  const Index row = row_begin + column / out_w;
  e.image = row / out_h;
  e.a = row % out_h;
  e.j = tap_row % kernel_w;
  e.i = (tap_row / kernel_w) % kernel_h;
  e.c = tap_row / (kernel_w * kernel_h);
  return e;
}

template <typename Acc, typename Index>
__device__ inline AxisSample<Acc> sample_h(const ColumnElement<Index>& e, const LSConvGeometry& g) {
  return axis_sample<Acc>(sample_position(e.a, e.i, g.stride_h, g.pad_h, g.dilation_h), g.height);
}

template <typename Acc, typename Index>
__device__ inline AxisSample<Acc> sample_w(const ColumnElement<Index>& e, const LSConvGeometry& g) {
  return axis_sample<Acc>(sample_position(e.b, e.j, g.stride_w, g.pad_w, g.dilation_w), g.width);
}

// Grid-stride loop over the elements of the tile's columns.
#define LSCONV_CUDA_KERNEL_LOOP(Index, index, total)                                 \
  for (Index index = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x);     \
       index < (total); index += Index(blockDim.x) * Index(gridDim.x))

// columns <- bilinear samples of `input` at every (tap, output pixel) of the tile.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_im2col_kernel(const T* __restrict__ input, LSConvGeometry g, Index row_begin,
                          Index row_end, T* __restrict__ columns) {
  using Acc = typename Accumulate<T>::type;
  const Index ncols = (row_end - row_begin) * Index(g.out_w);
  const Index total = Index(g.channels * g.kernel_h * g.kernel_w) * ncols;
  const Index plane = Index(g.height * g.width);
  LSCONV_CUDA_KERNEL_LOOP(Index, index, total) {
    const ColumnElement<Index> e = column_element(index, g, row_begin, ncols);
    const T* im = input + (e.image * Index(g.channels) + e.c) * plane;
    columns[index] = convert<T>(bilinear_value(im, g.width, sample_h<Acc>(e, g), sample_w<Acc>(e, g)));
  }
}

// Adds shared[0..kThreads) of two shared-memory arrays into their entry 0, in a fixed tree
// order. Every thread of the block calls it once it has written its own entries.
template <typename V>
__device__ inline void block_tree_sum(V* shared_h, V* shared_w) {
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      shared_h[threadIdx.x] += shared_h[threadIdx.x + half];
      shared_w[threadIdx.x] += shared_w[threadIdx.x + half];
    }
    __syncthreads();
  }
}

// From the tile's columns gradient, one pass over its elements:
//   kInput:   adds each element's pull-back onto its four neighbours of grad_input
//             (atomicAdd: overlapping samples of different taps and pixels meet, so
//             the summation order, and the rounding, varies between runs);
//   kStride:  reduces sum(grad * a * dX/dh) and sum(grad * b * dX/dw) per block, and
//             block k writes them to block_partials[2 * k] and [2 * k + 1] (no atomics:
//             ls_conv_sum_partials_kernel sums them in a fixed order);
//   kColumns: writes the tile's columns (as ls_conv_im2col_kernel) for the weight gradient.
// grad_columns and grad_input (with the layout of input) are in the accumulation type.
template <typename T, typename Index, bool kInput, bool kStride, bool kColumns>
__global__ void __launch_bounds__(kThreads)
    ls_conv_backward_kernel(const typename Accumulate<T>::type* __restrict__ grad_columns,
                            const T* __restrict__ input,
                            LSConvGeometry g, Index row_begin, Index row_end,
                            typename Accumulate<T>::type* grad_input,
                            typename Accumulate<T>::type* __restrict__ block_partials,
                            T* __restrict__ columns) {
  using Acc = typename Accumulate<T>::type;
  const Index ncols = (row_end - row_begin) * Index(g.out_w);
  const Index total = Index(g.channels * g.kernel_h * g.kernel_w) * ncols;
  const Index plane = Index(g.height * g.width);
  const Index width = Index(g.width);
  Acc sum_h = Acc(0);
  Acc sum_w = Acc(0);
  LSCONV_CUDA_KERNEL_LOOP(Index, index, total) {
    const ColumnElement<Index> e = column_element(index, g, row_begin, ncols);
    const AxisSample<Acc> h = sample_h<Acc>(e, g);
    const AxisSample<Acc> w = sample_w<Acc>(e, g);
    const Index plane_offset = (e.image * Index(g.channels) + e.c) * plane;
    const Acc grad = grad_columns[index];
    if (kInput && grad != Acc(0)) {
      Acc* gim = grad_input + plane_offset;
      if (h.weight_low != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomicAdd(gim + h.low * width + w.low, grad * h.weight_low * w.weight_low);
        if (w.weight_high != Acc(0))
          atomicAdd(gim + h.low * width + w.high, grad * h.weight_low * w.weight_high);
      }
      if (h.weight_high != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomicAdd(gim + h.high * width + w.low, grad * h.weight_high * w.weight_low);
        if (w.weight_high != Acc(0))
          atomicAdd(gim + h.high * width + w.high, grad * h.weight_high * w.weight_high);
      }
    }
    if (kStride || kColumns) {
      const T* im = input + plane_offset;
      if (kStride) {
        sum_h += grad * Acc(e.a) * coordinate_weight_h(im, g.width, h, w);
        sum_w += grad * Acc(e.b) * coordinate_weight_w(im, g.width, h, w);
      }
      if (kColumns) columns[index] = convert<T>(bilinear_value(im, g.width, h, w));
    }
  }
  if (kStride) {
    __shared__ Acc shared_h[kThreads];
    __shared__ Acc shared_w[kThreads];
    shared_h[threadIdx.x] = sum_h;
    shared_w[threadIdx.x] = sum_w;
    block_tree_sum(shared_h, shared_w);
    if (threadIdx.x == 0) {
      block_partials[2 * blockIdx.x] = shared_h[0];
      block_partials[2 * blockIdx.x + 1] = shared_w[0];
    }
  }
}

// stride_sum[k] += the sum over `blocks` of block_partials[2 * block + k], in float64 and
// in a fixed order (thread t sums blocks t, t + kThreads, ... in turn, then a tree in
// shared memory), so the stride gradient repeats bit for bit. One block.
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    ls_conv_sum_partials_kernel(const Acc* __restrict__ block_partials, int64_t blocks,
                                double* __restrict__ stride_sum) {
  __shared__ double partial_h[kThreads];
  __shared__ double partial_w[kThreads];
  double sum_h = 0.0;
  double sum_w = 0.0;
  for (int64_t block = threadIdx.x; block < blocks; block += kThreads) {
    sum_h += double(block_partials[2 * block]);
    sum_w += double(block_partials[2 * block + 1]);
  }
  partial_h[threadIdx.x] = sum_h;
  partial_w[threadIdx.x] = sum_w;
  block_tree_sum(partial_h, partial_w);
  if (threadIdx.x == 0) {
    stride_sum[0] += partial_h[0];
    stride_sum[1] += partial_w[0];
  }
}

// Weight of input index `pixel` in the interpolation `s` along one axis (0 when
// it is neither neighbour, or a neighbour outside the image).
template <typename Acc>
__device__ inline Acc pixel_weight(const AxisSample<Acc>& s, int64_t pixel) {
  return (s.low == pixel ? s.weight_low : Acc(0)) + (s.high == pixel ? s.weight_high : Acc(0));
}

// value clamped to [low, high] (in double, before any conversion to an index).
__device__ inline double clip(double value, int64_t low, int64_t high) {
  return fmin(fmax(value, double(low)), double(high));
}

// Input pixels whose gradient a tile of output rows can reach, as at most
// three boxes (images [image_begin, image_end) x rows [y_begin, y_end) x every
// channel and column): the rows of a partial image at either end of the tile,
// and the whole images between them.
struct PixelBox {
  int64_t image_begin, image_end, y_begin, y_end;
};

inline int reachable_pixel_boxes(const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                                 PixelBox boxes[3]) {
  int count = 0;
  for (int64_t row = row_begin; row < row_end;) {
    const int64_t image = row / g.out_h;
    const int64_t a = row % g.out_h;
    if (a == 0 && row_end - row >= g.out_h) {
      const int64_t images = (row_end - row) / g.out_h;
      boxes[count++] = PixelBox{image, image + images, 0, g.height};
      row += images * g.out_h;
      continue;
    }
    const int64_t rows = (g.out_h - a < row_end - row) ? g.out_h - a : row_end - row;
    // Samples of output rows [a, a + rows) lie within [lowest, highest] along h;
    // they reach input rows floor(lowest) to floor(highest) + 1 (one row of margin).
    const double lowest = double(a) * g.stride_h - double(g.pad_h);
    const double highest = double(a + rows - 1) * g.stride_h - double(g.pad_h) +
                           double((g.kernel_h - 1) * g.dilation_h);
    const double y_begin = std::fmax(std::floor(lowest) - 1, 0.0);
    const double y_end = std::fmin(std::floor(highest) + 3, double(g.height));
    if (y_begin < y_end) {
      boxes[count++] = PixelBox{image, image + 1, int64_t(y_begin), int64_t(y_end)};
    }
    row += rows;
  }
  return count;
}

// The input gradient of a tile without atomics, for deterministic mode: one
// thread per input pixel of `box` gathers, in a fixed order, what
// ls_conv_backward_kernel's kInput scatter adds to that pixel (the samples
// within one pixel of it: a few output indices per tap and axis), and adds the
// sum to grad_input (tiles run one after another on the stream).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_input_gradient_kernel(const typename Accumulate<T>::type* __restrict__ grad_columns,
                                  LSConvGeometry g, Index row_begin, Index row_end, PixelBox box,
                                  typename Accumulate<T>::type* __restrict__ grad_input) {
  using Acc = typename Accumulate<T>::type;
  const Index out_h = Index(g.out_h), out_w = Index(g.out_w);
  const Index height = Index(g.height), width = Index(g.width), channels = Index(g.channels);
  const Index ncols = (row_end - row_begin) * out_w;
  const Index box_rows = Index(box.y_end - box.y_begin);
  const Index box_plane = box_rows * width;
  const Index total = Index(box.image_end - box.image_begin) * channels * box_plane;
  LSCONV_CUDA_KERNEL_LOOP(Index, index, total) {
    const Index x = index % width;
    const Index y = Index(box.y_begin) + (index / width) % box_rows;
    const Index c = (index / box_plane) % channels;
    const Index image = Index(box.image_begin) + index / (box_plane * channels);
    // This image's output rows inside the tile: a in [a_begin, a_end).
    const Index first_row = image * out_h;
    const Index a_begin = (row_begin > first_row ? row_begin : first_row) - first_row;
    const Index a_end = (row_end - first_row < out_h ? row_end - first_row : out_h);
    Acc sum = Acc(0);
    for (Index i = 0; i < Index(g.kernel_h); ++i) {
      // a * stride_h - pad_h + i * dilation_h within (y - 1, y + 1), with one index of
      // margin, clipped to the tile's [a_begin, a_end) in floating point (tiny strides
      // give bounds far outside any index type).
      const double centre_h = double(y + Index(g.pad_h) - i * Index(g.dilation_h));
      const Index a_low = Index(clip(floor((centre_h - 1) / g.stride_h) - 1, a_begin, a_end));
      const Index a_high = Index(clip(ceil((centre_h + 1) / g.stride_h) + 2, a_begin, a_end));
      for (Index a = a_low; a < a_high; ++a) {
        const Acc weight_h = pixel_weight(
            axis_sample<Acc>(sample_position(a, i, g.stride_h, g.pad_h, g.dilation_h), g.height),
            y);
        if (weight_h == Acc(0)) continue;
        for (Index j = 0; j < Index(g.kernel_w); ++j) {
          const double centre_w = double(x + Index(g.pad_w) - j * Index(g.dilation_w));
          const Index b_low = Index(clip(floor((centre_w - 1) / g.stride_w) - 1, 0, out_w));
          const Index b_high = Index(clip(ceil((centre_w + 1) / g.stride_w) + 2, 0, out_w));
          const Index tap_row = (c * Index(g.kernel_h) + i) * Index(g.kernel_w) + j;
          const Acc* grad_row =
              grad_columns + tap_row * ncols + (first_row + a - row_begin) * out_w;
          for (Index b = b_low; b < b_high; ++b) {
            const Acc weight_w = pixel_weight(
                axis_sample<Acc>(sample_position(b, j, g.stride_w, g.pad_w, g.dilation_w),
                                 g.width),
                x);
            if (weight_w != Acc(0)) sum += grad_row[b] * weight_h * weight_w;
          }
        }
      }
    }
    grad_input[(image * channels + c) * height * width + y * width + x] += sum;
  }
}

#undef LSCONV_CUDA_KERNEL_LOOP

}  // namespace cuda
}  // namespace mmlstride

// CUDA kernels of the learnable-stride convolution: the sampling tables made from the
// stride on the device, bilinear im2col, the fused backward sampling pass (col2im onto
// the input gradient, the stride gradient, and the columns for the weight gradient), and
// the input gradient by gathering, for deterministic mode.
// Plain CUDA C++ with no torch header; the math is ls_conv_sampling.h's, shared with the
// CPU backend. Launch decisions: ls_conv_cuda_launch.cuh; launchers:
// csrc/pytorch/cuda/ls_conv_cuda.cu.
//
// The stride (and the phase, when given) stays on the device. ls_conv_tables_kernel reads
// it once per call, checks it (a device-side assertion: no host synchronisation) and
// computes, in float64, every sample's two neighbours and weights per axis into small
// tables (SamplingTables); the
// per-element kernels read those and do their arithmetic in Accumulate<T>::type (float
// for float, half and bfloat16; double for double), with no integer division (the
// index arithmetic divides by multiplying: FastDivider), but the gather's one.
//
// Layouts are those of csrc/pytorch/ls_conv_backend.h: a tile holds the batch's output
// rows [row_begin, row_end) (row = image * out_h + a), and its columns matrix is
// (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w). Element indices have type
// Index: int32_t when every element count of the call fits in it, int64_t otherwise.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cassert>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../ls_conv_sampling.h"

// Stops the kernel with a device-side assertion, as torch._assert_async does (not
// compiled out by NDEBUG). The CPU emulation defines its own, to observe it.
#ifndef LSCONV_ASSERT_FAIL
#define LSCONV_ASSERT_FAIL(message) __assert_fail(message, __FILE__, __LINE__, __func__)
#endif

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

// Threads per block of every kernel (the block reductions are sized by it).
constexpr int kThreads = 256;

LSCONV_HOST_DEVICE inline uint32_t multiply_high(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

LSCONV_HOST_DEVICE inline uint64_t multiply_high(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
  return __umul64hi(a, b);
#else
  return uint64_t((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// n / d for 0 <= n <= the largest Index and a divisor d >= 1 (0 reads as 1) fixed on the
// host, by a
// multiply-high, an add and a shift (Granlund and Montgomery's method, as in PyTorch's
// IntDivider): the integer division instruction costs tens of cycles on a GPU.
template <typename Index>
struct FastDivider {
  using Unsigned = typename std::conditional<sizeof(Index) == 4, uint32_t, uint64_t>::type;
  Unsigned magic;
  int shift;

  FastDivider() = default;
  explicit FastDivider(Index divisor) {
    // Twice the width, for magic = floor(2^bits * (2^shift - d) / d) + 1.
    using Wide = typename std::conditional<sizeof(Index) == 4, uint64_t, unsigned __int128>::type;
    const Wide d = Wide(divisor > 0 ? divisor : 1);
    shift = 0;
    while ((Wide(1) << shift) < d) ++shift;  // 2^shift >= d > 2^(shift - 1)
    magic = Unsigned(((Wide(1) << (8 * sizeof(Index))) * ((Wide(1) << shift) - d)) / d + 1);
  }

  LSCONV_HOST_DEVICE Index divide(Index n) const {
    const Unsigned high = multiply_high(Unsigned(n), magic);
    return Index((high + Unsigned(n)) >> shift);
  }
};

// [begin, end) of indices along one axis.
struct IndexRange {
  int begin, end;
};

// What ls_conv_tables_kernel computes from the stride, once per call, and the stride
// gradient's scratch. Tables are tap-major, so that neighbouring output pixels (threads)
// read neighbouring entries:
//   h[i * out_h + a], w[j * out_w + b]: the sample of output index a (b) and tap i (j);
//   h_sources[i * height + y], w_sources[j * width + x]: the output indices whose tap-i
//     (tap-j) sample lies within one pixel of input index y (x), with one of margin;
//   row_reach[a]: the input rows that output row a's samples reach, with one of margin;
//   stride_sum[0..3]: the gradients of (stride_h, stride_w, phase_h, phase_w) in float64,
//     summed over tiles (kGradientSums of them);
//   block_partials[kGradientSums * block + k]: the backward kernel's per-block sums of a tile;
//   blocks_done: how many of a tile's backward blocks have written theirs.
// The sums of the stride gradient's reduction: d/ds_h, d/ds_w, d/dt_h, d/dt_w (the phase's
// are the stride's without the output index factor).
constexpr int kGradientSums = 4;

template <typename Acc>
struct SamplingTables {
  AxisSample<Acc>* h;
  AxisSample<Acc>* w;
  IndexRange* h_sources;
  IndexRange* w_sources;
  IndexRange* row_reach;
  double* stride_sum;
  Acc* block_partials;
  unsigned int* blocks_done;
};

// value clamped to [low, high] (in double, before any conversion to an index).
LSCONV_HOST_DEVICE inline double clip(double value, double low, double high) {
  return fmin(fmax(value, low), high);
}

// Output indices whose samples a * stride + offset lie within (pixel - 1, pixel + 1), with
// one index of margin, clipped to [0, outs) in floating point (tiny strides give bounds
// far outside any index type).
LSCONV_HOST_DEVICE inline IndexRange sources_of(int64_t pixel, double offset, double stride,
                                                int64_t outs) {
  const double centre = double(pixel) - offset;
  return IndexRange{int(clip(floor((centre - 1) / stride) - 1, 0, double(outs))),
                    int(clip(ceil((centre + 1) / stride) + 2, 0, double(outs)))};
}

// Fills the tables of one call from stride[0..1] and phase[0..1] (on the device; a null
// phase is 0), zeroes the gradients' scratch, and asserts (on the device) that both
// strides are finite and > 0 and the phase finite.
template <typename S, typename Acc>
__global__ void __launch_bounds__(kThreads)
    ls_conv_tables_kernel(const S* __restrict__ stride, const S* __restrict__ phase,
                          LSConvGeometry g, SamplingTables<Acc> t) {
  const double s_h = double(stride[0]);
  const double s_w = double(stride[1]);
  const double t_h = phase ? double(phase[0]) : 0.0;
  const double t_w = phase ? double(phase[1]) : 0.0;
  const bool valid = s_h > 0 && s_w > 0 && s_h < INFINITY && s_w < INFINITY;  // false on NaN
  const bool phase_valid = fabs(t_h) < INFINITY && fabs(t_w) < INFINITY;      // false on NaN
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index == 0) {
    if (!valid) LSCONV_ASSERT_FAIL("stride expected finite values > 0 (mmlstride::ls_conv2d)");
    if (!phase_valid) LSCONV_ASSERT_FAIL("phase expected finite values (mmlstride::ls_conv2d)");
    for (int k = 0; k < kGradientSums; ++k) t.stride_sum[k] = 0.0;
    *t.blocks_done = 0;
  }
  // An invalid stride or phase has stopped the kernel above; the tables stay defined
  // regardless.
  const double stride_h = valid ? s_h : 1.0;
  const double stride_w = valid ? s_w : 1.0;
  const double phase_h = phase_valid ? t_h : 0.0;
  const double phase_w = phase_valid ? t_w : 0.0;
  if (index < g.kernel_h * g.out_h) {
    const int64_t i = index / g.out_h, a = index % g.out_h;
    t.h[index] = axis_sample<Acc>(
        sample_position(a, i, stride_h, phase_h, g.pad_h, g.dilation_h), g.height);
  }
  if (index < g.kernel_w * g.out_w) {
    const int64_t j = index / g.out_w, b = index % g.out_w;
    t.w[index] = axis_sample<Acc>(
        sample_position(b, j, stride_w, phase_w, g.pad_w, g.dilation_w), g.width);
  }
  if (index < g.kernel_h * g.height) {
    const int64_t i = index / g.height, y = index % g.height;
    t.h_sources[index] =
        sources_of(y, double(i * g.dilation_h - g.pad_h) + phase_h, stride_h, g.out_h);
  }
  if (index < g.kernel_w * g.width) {
    const int64_t j = index / g.width, x = index % g.width;
    t.w_sources[index] =
        sources_of(x, double(j * g.dilation_w - g.pad_w) + phase_w, stride_w, g.out_w);
  }
  if (index < g.out_h) {
    const double lowest = sample_position(index, 0, stride_h, phase_h, g.pad_h, g.dilation_h);
    const double highest = sample_position(index, g.kernel_h - 1, stride_h, phase_h, g.pad_h,
                                           g.dilation_h);
    t.row_reach[index] = IndexRange{int(clip(floor(lowest) - 1, 0, double(g.height))),
                                    int(clip(floor(highest) + 3, 0, double(g.height)))};
  }
}

// Index arithmetic of one tile, fixed on the host: its extent and divisors.
template <typename Index>
struct TileIndex {
  Index row_begin, row_end;
  Index ncols;  // (row_end - row_begin) * out_w
  Index total;  // C * kernel_h * kernel_w * ncols
  Index out_h, out_w, kernel_h, kernel_w, height, width, channels;
  FastDivider<Index> by_ncols, by_out_h, by_out_w, by_kernel_h, by_kernel_w, by_width,
      by_channels;
};

template <typename Index>
TileIndex<Index> make_tile_index(const LSConvGeometry& g, int64_t row_begin, int64_t row_end) {
  TileIndex<Index> t;
  t.row_begin = Index(row_begin);
  t.row_end = Index(row_end);
  t.ncols = Index((row_end - row_begin) * g.out_w);
  t.total = Index(g.channels * g.kernel_h * g.kernel_w) * t.ncols;
  t.out_h = Index(g.out_h);
  t.out_w = Index(g.out_w);
  t.kernel_h = Index(g.kernel_h);
  t.kernel_w = Index(g.kernel_w);
  t.height = Index(g.height);
  t.width = Index(g.width);
  t.channels = Index(g.channels);
  t.by_ncols = FastDivider<Index>(t.ncols);
  t.by_out_h = FastDivider<Index>(t.out_h);
  t.by_out_w = FastDivider<Index>(t.out_w);
  t.by_kernel_h = FastDivider<Index>(t.kernel_h);
  t.by_kernel_w = FastDivider<Index>(t.kernel_w);
  t.by_width = FastDivider<Index>(t.width);
  t.by_channels = FastDivider<Index>(t.channels);
  return t;
}

// The (channel, tap, output pixel) of one element of a tile's columns matrix.
template <typename Index>
struct ColumnElement {
  Index c, i, j, image, a, b;
};

template <typename Index>
__device__ inline ColumnElement<Index> column_element(Index index, const TileIndex<Index>& t) {
  ColumnElement<Index> e;
  const Index tap_row = t.by_ncols.divide(index);
  const Index column = index - tap_row * t.ncols;
  const Index tile_row = t.by_out_w.divide(column);
  e.b = column - tile_row * t.out_w;
  const Index row = t.row_begin + tile_row;
  e.image = t.by_out_h.divide(row);
  e.a = row - e.image * t.out_h;
  const Index channel_tap = t.by_kernel_w.divide(tap_row);
  e.j = tap_row - channel_tap * t.kernel_w;
  e.c = t.by_kernel_h.divide(channel_tap);
  e.i = channel_tap - e.c * t.kernel_h;
  return e;
}

// Grid-stride loop over `total` elements.
#define LSCONV_CUDA_KERNEL_LOOP(Index, index, total)                                 \
  for (Index index = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x);     \
       index < (total); index += Index(blockDim.x) * Index(gridDim.x))

// columns <- bilinear samples of `input` at every (tap, output pixel) of the tile.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_im2col_kernel(const T* __restrict__ input, SamplingTables<typename Accumulate<T>::type> s,
                          TileIndex<Index> t, T* __restrict__ columns) {
  const Index plane = t.height * t.width;
  LSCONV_CUDA_KERNEL_LOOP(Index, index, t.total) {
    const ColumnElement<Index> e = column_element(index, t);
    const T* im = input + (e.image * t.channels + e.c) * plane;
    columns[index] = convert<T>(
        bilinear_value(im, t.width, s.h[e.i * t.out_h + e.a], s.w[e.j * t.out_w + e.b]));
  }
}

// Adds shared[k][0..kThreads) into shared[k][0] for each of the first kSums arrays, in a
// fixed tree order. Every thread of the block calls it once it has written its own entries.
template <int kSums, typename V>
__device__ inline void block_tree_sum(V (*shared)[kThreads]) {
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      for (int k = 0; k < kSums; ++k) {
        shared[k][threadIdx.x] += shared[k][threadIdx.x + half];
      }
    }
    __syncthreads();
  }
}

// stride_sum[k] += the sum over `blocks` of block_partials[kGradientSums * block + k], in
// float64 and in a fixed order (thread t sums blocks t, t + kThreads, ... in turn, then a
// tree in shared memory), so the gradients repeat bit for bit. Called by every thread of
// one block. The partials are read through volatile loads: other blocks wrote them.
template <typename Acc>
__device__ inline void sum_block_partials(const Acc* block_partials, int64_t blocks,
                                          double* stride_sum) {
  __shared__ double partial[kGradientSums][kThreads];
  const volatile Acc* partials = block_partials;
  double sum[kGradientSums] = {};
  for (int64_t block = threadIdx.x; block < blocks; block += kThreads) {
    for (int k = 0; k < kGradientSums; ++k) sum[k] += double(partials[kGradientSums * block + k]);
  }
  for (int k = 0; k < kGradientSums; ++k) partial[k][threadIdx.x] = sum[k];
  block_tree_sum<kGradientSums>(partial);
  if (threadIdx.x == 0) {
    for (int k = 0; k < kGradientSums; ++k) stride_sum[k] += partial[k][0];
  }
}

// From the tile's columns gradient, one pass over its elements:
//   kInput:   adds each element's pull-back onto its four neighbours of grad_input
//             (atomicAdd: overlapping samples of different taps and pixels meet, so
//             the summation order, and the rounding, varies between runs);
//   kStride:  reduces sum(grad * a * dX/dh), sum(grad * b * dX/dw) (the stride's
//             gradient) per block into s.block_partials, and when kPhase sum(grad * dX/dh)
//             and sum(grad * dX/dw) (the phase's; 0 without kPhase, so that a call without
//             a learned phase does the stride's work alone); the last block to finish adds
//             them all, in a fixed order, to s.stride_sum (sum_block_partials) and re-arms
//             s.blocks_done;
//   kColumns: writes the tile's columns (as ls_conv_im2col_kernel) for the weight gradient.
// grad_columns and grad_input (with the layout of input) are in the accumulation type.
template <typename T, typename Index, bool kInput, bool kStride, bool kPhase, bool kColumns>
__global__ void __launch_bounds__(kThreads)
    ls_conv_backward_kernel(const typename Accumulate<T>::type* __restrict__ grad_columns,
                            const T* __restrict__ input,
                            SamplingTables<typename Accumulate<T>::type> s, TileIndex<Index> t,
                            typename Accumulate<T>::type* grad_input, T* __restrict__ columns) {
  static_assert(kStride || !kPhase, "the phase's sums come with the stride's");
  using Acc = typename Accumulate<T>::type;
  const Index plane = t.height * t.width;
  Acc sum_h = Acc(0);  // the stride's
  Acc sum_w = Acc(0);
  Acc phase_sum_h = Acc(0);  // the phase's
  Acc phase_sum_w = Acc(0);
  LSCONV_CUDA_KERNEL_LOOP(Index, index, t.total) {
    const ColumnElement<Index> e = column_element(index, t);
    const AxisSample<Acc> h = s.h[e.i * t.out_h + e.a];
    const AxisSample<Acc> w = s.w[e.j * t.out_w + e.b];
    const Index plane_offset = (e.image * t.channels + e.c) * plane;
    const Acc grad = grad_columns[index];
    if (kInput && grad != Acc(0)) {
      Acc* gim = grad_input + plane_offset;
      if (h.weight_low != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomicAdd(gim + h.low * t.width + w.low, grad * h.weight_low * w.weight_low);
        if (w.weight_high != Acc(0))
          atomicAdd(gim + h.low * t.width + w.high, grad * h.weight_low * w.weight_high);
      }
      if (h.weight_high != Acc(0)) {
        if (w.weight_low != Acc(0))
          atomicAdd(gim + h.high * t.width + w.low, grad * h.weight_high * w.weight_low);
        if (w.weight_high != Acc(0))
          atomicAdd(gim + h.high * t.width + w.high, grad * h.weight_high * w.weight_high);
      }
    }
    if (kStride || kColumns) {
      const T* im = input + plane_offset;
      if (kStride) {
        const Acc slope_h = coordinate_weight_h(im, t.width, h, w);
        const Acc slope_w = coordinate_weight_w(im, t.width, h, w);
        sum_h += grad * Acc(e.a) * slope_h;
        sum_w += grad * Acc(e.b) * slope_w;
        if (kPhase) {
          phase_sum_h += grad * slope_h;
          phase_sum_w += grad * slope_w;
        }
      }
      if (kColumns) columns[index] = convert<T>(bilinear_value(im, t.width, h, w));
    }
  }
  if (kStride) {
    __shared__ Acc shared[kGradientSums][kThreads];
    __shared__ bool last_block;
    constexpr int kSums = kPhase ? 4 : 2;  // the phase's last
    shared[0][threadIdx.x] = sum_h;
    shared[1][threadIdx.x] = sum_w;
    if (kPhase) {
      shared[2][threadIdx.x] = phase_sum_h;
      shared[3][threadIdx.x] = phase_sum_w;
    }
    block_tree_sum<kSums>(shared);
    if (threadIdx.x == 0) {
      for (int k = 0; k < kGradientSums; ++k) {
        s.block_partials[kGradientSums * blockIdx.x + k] = k < kSums ? shared[k][0] : Acc(0);
      }
      __threadfence();  // the partials are visible before this block counts as done
      last_block = atomicAdd(s.blocks_done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (last_block) {
      __threadfence();
      sum_block_partials(s.block_partials, int64_t(gridDim.x), s.stride_sum);
      // Re-armed for the next tile's launch, atomically: the other blocks' atomicAdds on it
      // are not ordered before this store by anything but the atomics themselves.
      if (threadIdx.x == 0) atomicExch(s.blocks_done, 0u);
    }
  }
}

// Weight of input index `pixel` in the interpolation `s` along one axis (0 when
// it is neither neighbour, or a neighbour outside the image).
template <typename Acc>
__device__ inline Acc pixel_weight(const AxisSample<Acc>& s, int pixel) {
  return (s.low == pixel ? s.weight_low : Acc(0)) + (s.high == pixel ? s.weight_high : Acc(0));
}

// Images [image_begin, image_end) of a tile whose output rows in the tile are all within
// [a_begin, a_end): a run of whole images (0, out_h), or one image's part at either end.
struct ImageRows {
  int64_t image_begin, image_end, a_begin, a_end;
};

// The tile's rows as at most three ImageRows (host code: no stride needed).
inline int tile_image_rows(const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                           ImageRows parts[3]) {
  int count = 0;
  for (int64_t row = row_begin; row < row_end;) {
    const int64_t image = row / g.out_h;
    const int64_t a = row % g.out_h;
    if (a == 0 && row_end - row >= g.out_h) {
      const int64_t images = (row_end - row) / g.out_h;
      parts[count++] = ImageRows{image, image + images, 0, g.out_h};
      row += images * g.out_h;
    } else {
      const int64_t rows = (g.out_h - a < row_end - row) ? g.out_h - a : row_end - row;
      parts[count++] = ImageRows{image, image + 1, a, a + rows};
      row += rows;
    }
  }
  return count;
}

// The input gradient of a tile without atomics, for deterministic mode: one thread per
// input pixel of `part`'s images that its rows reach (s.row_reach: found on the device)
// gathers, in a fixed order, what ls_conv_backward_kernel's kInput scatter adds to that
// pixel (the samples within one pixel of it: s.h_sources and s.w_sources), and adds the
// sum to grad_input (tiles run one after another on the stream). Launched for every
// pixel of the images; threads beyond the reached rows' pixels have nothing to do.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_input_gradient_kernel(const typename Accumulate<T>::type* __restrict__ grad_columns,
                                  SamplingTables<typename Accumulate<T>::type> s,
                                  TileIndex<Index> t, ImageRows part,
                                  typename Accumulate<T>::type* __restrict__ grad_input) {
  using Acc = typename Accumulate<T>::type;
  const Index y_begin = Index(s.row_reach[part.a_begin].begin);
  const Index y_end = Index(s.row_reach[part.a_end - 1].end);
  if (y_end <= y_begin) return;
  const Index box_rows = y_end - y_begin;
  const Index total = Index(part.image_end - part.image_begin) * t.channels * box_rows * t.width;
  LSCONV_CUDA_KERNEL_LOOP(Index, index, total) {
    const Index line = t.by_width.divide(index);
    const Index x = index - line * t.width;
    const Index plane_index = line / box_rows;  // the one integer division
    const Index y = y_begin + line - plane_index * box_rows;
    const Index image_offset = t.by_channels.divide(plane_index);
    const Index c = plane_index - image_offset * t.channels;
    const Index image = Index(part.image_begin) + image_offset;
    // This image's output rows inside the tile: a in [a_begin, a_end).
    const Index first_row = image * t.out_h;
    const Index a_begin = (t.row_begin > first_row ? t.row_begin : first_row) - first_row;
    const Index a_end = (t.row_end - first_row < t.out_h ? t.row_end - first_row : t.out_h);
    Acc sum = Acc(0);
    for (Index i = 0; i < t.kernel_h; ++i) {
      const IndexRange rows = s.h_sources[i * t.height + y];
      const Index a_low = Index(rows.begin) > a_begin ? Index(rows.begin) : a_begin;
      const Index a_high = Index(rows.end) < a_end ? Index(rows.end) : a_end;
      for (Index a = a_low; a < a_high; ++a) {
        const Acc weight_h = pixel_weight(s.h[i * t.out_h + a], int(y));
        if (weight_h == Acc(0)) continue;
        for (Index j = 0; j < t.kernel_w; ++j) {
          const IndexRange cols = s.w_sources[j * t.width + x];
          const Index tap_row = (c * t.kernel_h + i) * t.kernel_w + j;
          const Acc* grad_row = grad_columns + tap_row * t.ncols + (first_row + a - t.row_begin) * t.out_w;
          for (Index b = Index(cols.begin); b < Index(cols.end); ++b) {
            const Acc weight_w = pixel_weight(s.w[j * t.out_w + b], int(x));
            if (weight_w != Acc(0)) sum += grad_row[b] * weight_h * weight_w;
          }
        }
      }
    }
    grad_input[(image * t.channels + c) * t.height * t.width + y * t.width + x] += sum;
  }
}

#undef LSCONV_CUDA_KERNEL_LOOP

}  // namespace cuda
}  // namespace mmlstride

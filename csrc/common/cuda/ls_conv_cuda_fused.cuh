// Fused sampling GEMMs of the learnable-stride convolution on CUDA: the forward and the
// weight gradient as implicit GEMMs whose sampled operand is gathered straight into
// shared-memory tiles, so that no columns matrix passes through global memory.
//
//   forward:         output[o, p] = sum_k weight[o, k] * sample(k, p) + bias[o]
//   weight gradient: partial[split, o, k] = sum_{p in split} grad_output[o, p] * sample(k, p)
//
// per group, where p is an output pixel of the batch (image, a, b), k = (c * kernel_h + i) *
// kernel_w + j a (channel in the group, tap), and sample(k, p) the bilinear sample of input
// channel c at output pixel p's tap (i, j) (the columns element of ls_conv_im2col_kernel).
// A block computes a kTileM x kTileN tile of the product in steps of tile_k() along the
// reduction: each step loads its tile of the dense operand (weight, grad_output) and samples
// its tile of columns into shared memory, then multiplies the two. The product runs on the
// tensor cores (WMMA, float accumulators) for float16, and for bfloat16 from sm_80; float32
// and float64 (and bfloat16 below sm_80) multiply with fused multiply-adds in
// Accumulate<T>::type. The weight gradient's pixels are split among blocks; the host sums
// the splits' partial products (in a fixed order: deterministic).
// Plain CUDA C++ with no torch header, run on the CPU emulation too (tests/cuda/emulation).
// Launch decisions: ls_conv_cuda_launch.cuh.
#pragma once

#include "ls_conv_cuda_kernel.cuh"

#if defined(__CUDACC__)
#include <mma.h>
#endif

namespace mmlstride {
namespace cuda {

// The block's tile of the product: kTileM output channels by kTileN columns (output pixels
// in the forward, (channel, tap) pairs in the weight gradient), 8 warps of 32 x 32.
constexpr int kTileM = 64;
constexpr int kTileN = 128;
// Threads that share one column of the tile (each takes every kColumnThreads-th row).
constexpr int kColumnThreads = kThreads / kTileN;
static_assert(kThreads % kTileN == 0, "a whole number of threads per column");

// The reduction step: 32 for 2- and 4-byte elements, 16 for float64 (the operand tiles
// then fit the 48 KiB of static shared memory).
template <typename T>
LSCONV_HOST_DEVICE constexpr int tile_k() {
  return sizeof(T) == 8 ? 16 : 32;
}

// Whether a block's product runs on the tensor cores. bfloat16's warp matrix functions need
// sm_80 (the host launches bfloat16 there only; older architectures compile the fallback).
template <typename T>
struct UsesTensorCores : std::false_type {};
template <>
struct UsesTensorCores<__half> : std::true_type {};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
struct UsesTensorCores<__nv_bfloat16> : std::true_type {};
#endif

// Shared memory of a block: the operand tiles (row-major, rows padded by 8 elements against
// bank conflicts, keeping every 16 x 16 fragment 256-bit aligned as WMMA requires), and in
// the same bytes afterwards the float accumulators that the tensor-core product stages for
// the epilogue.
template <typename T>
struct FusedTileLayout {
  static constexpr int kLdA = tile_k<T>() + 8;  // a: kTileM x tile_k
  static constexpr int kLdB = kTileN + 8;       // b: tile_k x kTileN
  static constexpr int kLdC = kTileN + 4;       // c: kTileM x kTileN floats
  static constexpr int kOperandBytes = (kTileM * kLdA + tile_k<T>() * kLdB) * int(sizeof(T));
  static constexpr int kStagingBytes = UsesTensorCores<T>::value ? kTileM * kLdC * 4 : 0;
  static constexpr int kBytes = kOperandBytes > kStagingBytes ? kOperandBytes : kStagingBytes;
};

template <typename T>
struct alignas(128) FusedShared {
  unsigned char bytes[FusedTileLayout<T>::kBytes];
};

template <typename T, typename Acc, bool kTensorCores = UsesTensorCores<T>::value>
struct BlockProduct;

// The product by fused multiply-adds: thread t accumulates column t % kTileN of rows
// t / kTileN + kColumnThreads * q.
template <typename T, typename Acc>
struct BlockProduct<T, Acc, false> {
  static constexpr int kRows = kTileM / kColumnThreads;
  Acc sums[kRows];

  __device__ void zero() {
    for (int q = 0; q < kRows; ++q) sums[q] = Acc(0);
  }

  // sums += a (kTileM x tile_k, leading dimension lda) times b (tile_k x kTileN, ldb).
  __device__ void multiply(const T* a, int lda, const T* b, int ldb) {
    const int column = int(threadIdx.x) % kTileN;
    const int first_row = int(threadIdx.x) / kTileN;
    for (int kk = 0; kk < tile_k<T>(); ++kk) {
      const Acc value = convert<Acc>(b[kk * ldb + column]);
      for (int q = 0; q < kRows; ++q) {
        sums[q] += convert<Acc>(a[(first_row + kColumnThreads * q) * lda + kk]) * value;
      }
    }
  }

  __device__ void stage(float*, int) {}

  // Row first_row + kColumnThreads * q of this thread's column.
  __device__ Acc result(int q, const float*, int) const { return sums[q]; }
};

#if defined(__CUDACC__) || defined(LSCONV_EMULATED_WMMA)
// The product on the tensor cores: warp w computes the 32 x 32 tile at rows 32 * (w / 4),
// columns 32 * (w % 4), as 2 x 2 fragments of 16 x 16, and stages it in shared memory for
// the epilogue, which reads it by the fused multiply-add product's thread layout.
template <typename T>
struct BlockProduct<T, float, true> {
  static constexpr int kRows = kTileM / kColumnThreads;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> sums[2][2];

  __device__ int warp_row() const { return 32 * (int(threadIdx.x) / 32 / 4); }
  __device__ int warp_column() const { return 32 * (int(threadIdx.x) / 32 % 4); }

  __device__ void zero() {
    for (int x = 0; x < 2; ++x) {
      for (int y = 0; y < 2; ++y) nvcuda::wmma::fill_fragment(sums[x][y], 0.0f);
    }
  }

  __device__ void multiply(const T* a, int lda, const T* b, int ldb) {
    using namespace nvcuda;
    for (int kk = 0; kk < tile_k<T>(); kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_part[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_part[2];
      for (int x = 0; x < 2; ++x) {
        wmma::load_matrix_sync(a_part[x], a + (warp_row() + 16 * x) * lda + kk, lda);
      }
      for (int y = 0; y < 2; ++y) {
        wmma::load_matrix_sync(b_part[y], b + kk * ldb + warp_column() + 16 * y, ldb);
      }
      for (int x = 0; x < 2; ++x) {
        for (int y = 0; y < 2; ++y) wmma::mma_sync(sums[x][y], a_part[x], b_part[y], sums[x][y]);
      }
    }
  }

  // Writes the accumulators to c (kTileM x kTileN, ldc); the caller then synchronises.
  __device__ void stage(float* c, int ldc) {
    for (int x = 0; x < 2; ++x) {
      for (int y = 0; y < 2; ++y) {
        nvcuda::wmma::store_matrix_sync(c + (warp_row() + 16 * x) * ldc + warp_column() + 16 * y,
                                        sums[x][y], ldc, nvcuda::wmma::mem_row_major);
      }
    }
  }

  __device__ float result(int q, const float* c, int ldc) const {
    const int row = int(threadIdx.x) / kTileN + kColumnThreads * q;
    return c[row * ldc + int(threadIdx.x) % kTileN];
  }
};
#endif

// Index arithmetic of a fused launch, fixed on the host.
template <typename Index>
struct FusedIndex {
  Index pixels;                   // batch * out_h * out_w
  Index out_plane, out_w, out_h;  // out_h * out_w, out_w, out_h
  Index plane, width;             // height * width, width
  Index channels, out_channels;   // of the input, of the output
  Index group_channels, group_out_channels;
  Index reduction;  // the forward's: group_channels * kernel_h * kernel_w
  Index taps;       // kernel_h * kernel_w
  Index kernel_w;
  Index tiles_m, tiles_n;
  FastDivider<Index> by_out_plane, by_out_w, by_taps, by_kernel_w;
};

template <typename Index>
FusedIndex<Index> make_fused_index(const LSConvGeometry& g, int64_t batch, int64_t out_channels,
                                   int64_t groups, int64_t tile_columns) {
  FusedIndex<Index> f;
  f.pixels = Index(batch * g.out_h * g.out_w);
  f.out_plane = Index(g.out_h * g.out_w);
  f.out_w = Index(g.out_w);
  f.out_h = Index(g.out_h);
  f.plane = Index(g.height * g.width);
  f.width = Index(g.width);
  f.channels = Index(g.channels);
  f.out_channels = Index(out_channels);
  f.group_channels = Index(g.channels / groups);
  f.group_out_channels = Index(out_channels / groups);
  f.taps = Index(g.kernel_h * g.kernel_w);
  f.kernel_w = Index(g.kernel_w);
  f.reduction = f.group_channels * f.taps;
  f.tiles_m = Index((f.group_out_channels + kTileM - 1) / kTileM);
  f.tiles_n = Index((tile_columns + kTileN - 1) / kTileN);
  f.by_out_plane = FastDivider<Index>(f.out_plane);
  f.by_out_w = FastDivider<Index>(f.out_w);
  f.by_taps = FastDivider<Index>(f.taps);
  f.by_kernel_w = FastDivider<Index>(Index(g.kernel_w));
  return f;
}

// An output pixel of the batch: its image and its offset in the output plane (a * out_w + b).
template <typename Index>
struct FusedPixel {
  Index image, offset, a, b;
};

template <typename Index>
__device__ inline FusedPixel<Index> fused_pixel(Index pixel, const FusedIndex<Index>& f) {
  FusedPixel<Index> p;
  p.image = f.by_out_plane.divide(pixel);
  p.offset = pixel - p.image * f.out_plane;
  p.a = f.by_out_w.divide(p.offset);
  p.b = p.offset - p.a * f.out_w;
  return p;
}

// A reduction index k of the forward as (channel in the group, tap row i, tap column j).
template <typename Index>
struct FusedTap {
  Index c, i, j;
};

template <typename Index>
__device__ inline FusedTap<Index> fused_tap(Index k, const FusedIndex<Index>& f) {
  FusedTap<Index> t;
  t.c = f.by_taps.divide(k);
  const Index tap = k - t.c * f.taps;
  t.i = f.by_kernel_w.divide(tap);
  t.j = tap - t.i * f.kernel_w;
  return t;
}

// The forward of the whole batch: block (group, tile_m, tile_n), tile_n fastest, computes
// output channels [kTileM * tile_m, +kTileM) of the group at output pixels
// [kTileN * tile_n, +kTileN). weight is (out_channels, group_channels * taps), contiguous;
// bias is null or (out_channels).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_forward_fused_kernel(const T* __restrict__ input, const T* __restrict__ weight,
                                 const T* __restrict__ bias,
                                 SamplingTables<typename Accumulate<T>::type> s,
                                 FusedIndex<Index> f, T* __restrict__ output) {
  using Acc = typename Accumulate<T>::type;
  using Layout = FusedTileLayout<T>;
  constexpr int kTileK = tile_k<T>();
  __shared__ FusedShared<T> shared;
  T* a_tile = reinterpret_cast<T*>(shared.bytes);
  T* b_tile = a_tile + kTileM * Layout::kLdA;
  float* c_tile = reinterpret_cast<float*>(shared.bytes);

  const Index block = Index(blockIdx.x);
  const Index tile_n = block % f.tiles_n;
  const Index group_tile_m = block / f.tiles_n;
  const Index tile_m = group_tile_m % f.tiles_m;
  const Index group = group_tile_m / f.tiles_m;
  const Index m_begin = tile_m * kTileM;
  const Index out_channel_begin = group * f.group_out_channels + m_begin;
  const Index rows = f.group_out_channels - m_begin < kTileM ? f.group_out_channels - m_begin
                                                             : Index(kTileM);

  // This thread's column: one output pixel, sampled and written by it throughout.
  const int column = int(threadIdx.x) % kTileN;
  const int first_row = int(threadIdx.x) / kTileN;
  const Index pixel = tile_n * kTileN + column;
  const bool in_batch = pixel < f.pixels;
  const FusedPixel<Index> p = fused_pixel(in_batch ? pixel : Index(0), f);
  const T* group_input = input + (p.image * f.channels + group * f.group_channels) * f.plane;
  const T zero = convert<T>(Acc(0));

  BlockProduct<T, Acc> product;
  product.zero();
  for (Index k_begin = 0; k_begin < f.reduction; k_begin += kTileK) {
    for (int e = int(threadIdx.x); e < kTileM * kTileK; e += kThreads) {
      const int m = e / kTileK, kk = e % kTileK;
      const Index k = k_begin + kk;
      a_tile[m * Layout::kLdA + kk] =
          m < rows && k < f.reduction ? weight[(out_channel_begin + m) * f.reduction + k] : zero;
    }
    for (int kk = first_row; kk < kTileK; kk += kColumnThreads) {
      const Index k = k_begin + kk;
      T value = zero;
      if (in_batch && k < f.reduction) {
        const FusedTap<Index> tap = fused_tap(k, f);
        value = convert<T>(bilinear_value(group_input + tap.c * f.plane, f.width,
                                          s.h[tap.i * f.out_h + p.a], s.w[tap.j * f.out_w + p.b]));
      }
      b_tile[kk * Layout::kLdB + column] = value;
    }
    __syncthreads();
    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);
    __syncthreads();  // the tiles are read before the next step overwrites them
  }
  product.stage(c_tile, Layout::kLdC);
  __syncthreads();
  if (!in_batch) return;
  T* pixel_output = output + p.image * f.out_channels * f.out_plane + p.offset;
  for (int q = 0; q < BlockProduct<T, Acc>::kRows; ++q) {
    const Index m = Index(first_row + kColumnThreads * q);
    if (m >= rows) break;
    const Index o = out_channel_begin + m;
    Acc value = product.result(q, c_tile, Layout::kLdC);
    if (bias) value += convert<Acc>(bias[o]);
    pixel_output[o * f.out_plane] = convert<T>(value);
  }
}

// The weight gradient's partial products: block (split, group, tile_m, tile_n), tile_n
// fastest, sums over output pixels [pixel_begin, pixel_end) of the split (split * chunk,
// clipped to the batch) and writes partial[split] (out_channels x group_channels * taps, in
// Accumulate<T>::type) at output channels [kTileM * tile_m, +kTileM) of the group and
// reduction indices [kTileN * tile_n, +kTileN).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    ls_conv_weight_gradient_fused_kernel(const T* __restrict__ grad_output,
                                         const T* __restrict__ input,
                                         SamplingTables<typename Accumulate<T>::type> s,
                                         FusedIndex<Index> f, Index chunk, Index groups,
                                         typename Accumulate<T>::type* __restrict__ partial) {
  using Acc = typename Accumulate<T>::type;
  using Layout = FusedTileLayout<T>;
  constexpr int kTileK = tile_k<T>();
  __shared__ FusedShared<T> shared;
  T* a_tile = reinterpret_cast<T*>(shared.bytes);
  T* b_tile = a_tile + kTileM * Layout::kLdA;
  float* c_tile = reinterpret_cast<float*>(shared.bytes);

  const Index block = Index(blockIdx.x);
  const Index tile_n = block % f.tiles_n;
  const Index rest = block / f.tiles_n;
  const Index tile_m = rest % f.tiles_m;
  const Index split_group = rest / f.tiles_m;
  const Index group = split_group % groups;
  const Index split = split_group / groups;
  const Index m_begin = tile_m * kTileM;
  const Index out_channel_begin = group * f.group_out_channels + m_begin;
  const Index rows = f.group_out_channels - m_begin < kTileM ? f.group_out_channels - m_begin
                                                             : Index(kTileM);
  const Index pixel_begin = split * chunk;
  const Index pixel_end = f.pixels - pixel_begin < chunk ? f.pixels : pixel_begin + chunk;

  // This thread's column: one reduction index (channel, tap), sampled by it throughout.
  const int column = int(threadIdx.x) % kTileN;
  const int first_row = int(threadIdx.x) / kTileN;
  const Index k = tile_n * kTileN + column;
  const bool in_reduction = k < f.reduction;
  const FusedTap<Index> tap = fused_tap(in_reduction ? k : Index(0), f);
  const Index channel_offset = (group * f.group_channels + tap.c) * f.plane;
  const T zero = convert<T>(Acc(0));

  BlockProduct<T, Acc> product;
  product.zero();
  for (Index step = pixel_begin; step < pixel_end; step += kTileK) {
    for (int e = int(threadIdx.x); e < kTileM * kTileK; e += kThreads) {
      const int m = e / kTileK, kk = e % kTileK;
      const Index pixel = step + kk;
      T value = zero;
      if (m < rows && pixel < pixel_end) {
        const FusedPixel<Index> p = fused_pixel(pixel, f);
        value = grad_output[(p.image * f.out_channels + out_channel_begin + m) * f.out_plane +
                            p.offset];
      }
      a_tile[m * Layout::kLdA + kk] = value;
    }
    for (int kk = first_row; kk < kTileK; kk += kColumnThreads) {
      const Index pixel = step + kk;
      T value = zero;
      if (in_reduction && pixel < pixel_end) {
        const FusedPixel<Index> p = fused_pixel(pixel, f);
        value = convert<T>(bilinear_value(input + p.image * f.channels * f.plane + channel_offset,
                                          f.width, s.h[tap.i * f.out_h + p.a],
                                          s.w[tap.j * f.out_w + p.b]));
      }
      b_tile[kk * Layout::kLdB + column] = value;
    }
    __syncthreads();
    product.multiply(a_tile, Layout::kLdA, b_tile, Layout::kLdB);
    __syncthreads();
  }
  product.stage(c_tile, Layout::kLdC);
  __syncthreads();
  if (!in_reduction) return;
  Acc* split_partial = partial + split * f.out_channels * f.reduction + k;
  for (int q = 0; q < BlockProduct<T, Acc>::kRows; ++q) {
    const Index m = Index(first_row + kColumnThreads * q);
    if (m >= rows) break;
    split_partial[(out_channel_begin + m) * f.reduction] =
        Acc(product.result(q, c_tile, Layout::kLdC));
  }
}

}  // namespace cuda
}  // namespace mmlstride

// CPU kernels of the learnable-stride convolution: the forward (ls_conv_forward_pixels_cpu)
// and the channel-major columns (im2col), both sampled pixel-major from input rows copied
// channels-last, and the col2im scatter fused with the stride-gradient reduction.
//
// Sampled pixel-major, each (pixel, tap) is one vectorised blend of four contiguous runs
// over channels. The backward uses the separability of the bilinear sample
// (ls_conv_sampling.h): for a kernel column j, every input row needed by the tile is first
// interpolated along w at the out_w sample columns (a gather), then each (i, a) output row
// is a two-row blend along h, contiguous in b and vectorised; it runs these two passes
// transposed.
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../ls_conv_kernels.h"

namespace mmlstride {
namespace {

// Interpolation along one axis for every (tap, output index), tap-major, as
// structure of arrays (see AxisSample).
template <typename T>
struct AxisTable {
  std::vector<int> low, high;
  std::vector<T> weight_low, weight_high, slope_low, slope_high;

  AxisTable(int64_t taps, int64_t outs, double stride, double phase, int64_t pad,
            int64_t dilation, int64_t size)
      : low(taps * outs), high(taps * outs), weight_low(taps * outs), weight_high(taps * outs),
        slope_low(taps * outs), slope_high(taps * outs) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t out = 0; out < outs; ++out) {
        const auto s =
            axis_sample<T>(sample_position(out, tap, stride, phase, pad, dilation), size);
        const int64_t k = tap * outs + out;
        low[k] = s.low;
        high[k] = s.high;
        weight_low[k] = s.weight_low;
        weight_high[k] = s.weight_high;
        slope_low[k] = s.slope_low;
        slope_high[k] = s.slope_high;
      }
    }
  }
};

// The part of a tile inside one image: output rows [a_begin, a_end) of image
// `image`, whose first column in the tile's columns is `column`.
struct ImageRows {
  int64_t image, a_begin, a_end, column;
};

std::vector<ImageRows> split_by_image(const LSConvGeometry& g, int64_t row_begin,
                                      int64_t row_end) {
  std::vector<ImageRows> parts;
  for (int64_t row = row_begin; row < row_end;) {
    const int64_t image = row / g.out_h;
    const int64_t a_begin = row % g.out_h;
    const int64_t a_end = std::min(g.out_h, a_begin + (row_end - row));
    parts.push_back({image, a_begin, a_end, (row - row_begin) * g.out_w});
    row += a_end - a_begin;
  }
  return parts;
}

// Whether the low (or high) neighbour of entry k lies inside the image: it has a
// weight or a slope (a weight alone is 0 at the integer position of the high one).
template <typename T>
bool is_used(const AxisTable<T>& t, int64_t k, bool low) {
  return low ? (t.weight_low[k] != T(0) || t.slope_low[k] != T(0))
             : (t.weight_high[k] != T(0) || t.slope_high[k] != T(0));
}

// Input rows [first, last] that carry weight for output rows [a_begin, a_end)
// along h (last < first when none does).
template <typename T>
void rows_used(const AxisTable<T>& h, const LSConvGeometry& g, int64_t a_begin, int64_t a_end,
               int64_t& first, int64_t& last) {
  first = g.height;
  last = -1;
  for (int64_t i = 0; i < g.kernel_h; ++i) {
    for (int64_t a = a_begin; a < a_end; ++a) {
      const int64_t k = i * g.out_h + a;
      if (is_used(h, k, true)) {
        first = std::min<int64_t>(first, h.low[k]);
        last = std::max<int64_t>(last, h.low[k]);
      }
      if (is_used(h, k, false)) {
        first = std::min<int64_t>(first, h.high[k]);
        last = std::max<int64_t>(last, h.high[k]);
      }
    }
  }
}

// Interpolation along w at kernel column j (table entries wk = j * out_w ...) of
// the input rows r in [first, last]: value[r - first][b] with the weights, and when kSlope
// b times its derivative along w, moment[r - first][b], and when kPhase that derivative,
// slope[r - first][b], from one gather (the sample position moves by b per unit of s_w, by
// 1 per unit of t_w).
template <typename T, bool kSlope, bool kPhase>
void interpolate_rows(const T* im, const LSConvGeometry& g, int64_t first, int64_t last,
                      const AxisTable<T>& w, int64_t wk, T* value, T* slope, T* moment) {
  const int* low = &w.low[wk];
  const int* high = &w.high[wk];
  const T* wl = &w.weight_low[wk];
  const T* wh = &w.weight_high[wk];
  const T* sl = &w.slope_low[wk];
  const T* sh = &w.slope_high[wk];
  for (int64_t r = first; r <= last; ++r) {
    const T* row = im + r * g.width;
    T* value_row = value + (r - first) * g.out_w;
    T* slope_row = kPhase ? slope + (r - first) * g.out_w : nullptr;
    T* moment_row = kSlope ? moment + (r - first) * g.out_w : nullptr;
    for (int64_t b = 0; b < g.out_w; ++b) {
      const T x_low = row[low[b]];
      const T x_high = row[high[b]];
      value_row[b] = wl[b] * x_low + wh[b] * x_high;
      if (kSlope) {
        const T derivative = sl[b] * x_low + sh[b] * x_high;
        moment_row[b] = T(b) * derivative;
        if (kPhase) slope_row[b] = derivative;
      }
    }
  }
}

// Compiles a function for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2, FMA) too, picked at load
// time where the CPU has them; the baseline build targets SSE2 only.
// target_clones needs GNU ifunc: glibc on Linux (not musl, not Mach-O).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    defined(__linux__) && defined(__GLIBC__)
#define MMLSTRIDE_HAS_AVX2_CLONES 1
#define MMLSTRIDE_CLONES_FOR_AVX2 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMLSTRIDE_CLONES_FOR_AVX2
#endif

// to[x * to_stride + c] = from[c * from_stride + x] for c < channels, x < count (a matrix
// transposed, e.g. input rows of several channels written channels-last) is done in 8 x 8
// blocks (transpose_rows_float, transpose_rows_double) and, outside the whole blocks, here.
template <typename T>
inline void transpose_edges(const T* from, int64_t from_stride, int64_t channels,
                            int64_t count, T* to, int64_t to_stride) {
  const int64_t blocked_channels = channels / 8 * 8;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t x = c < blocked_channels ? count / 8 * 8 : 0; x < count; ++x) {
      to[x * to_stride + c] = from[c * from_stride + x];
    }
  }
}

// The whole 8 x 8 blocks' transposes, through a local array (the compiler's choice of
// instructions).
template <typename T>
inline void transpose_blocks(const T* from, int64_t from_stride, int64_t channels,
                             int64_t count, T* to, int64_t to_stride) {
  for (int64_t c0 = 0; c0 + 8 <= channels; c0 += 8) {
    for (int64_t x0 = 0; x0 + 8 <= count; x0 += 8) {
      T block[8][8];
      for (int64_t c = 0; c < 8; ++c) {
        for (int64_t x = 0; x < 8; ++x) block[x][c] = from[(c0 + c) * from_stride + x0 + x];
      }
      for (int64_t x = 0; x < 8; ++x) {
        for (int64_t c = 0; c < 8; ++c) to[(x0 + x) * to_stride + c0 + c] = block[x][c];
      }
    }
  }
}

#ifdef MMLSTRIDE_HAS_AVX2_CLONES
// One 8 x 8 float block's transpose in AVX registers (unpack, shuffle, swap of 128-bit
// halves): 1.7x the speed of the array version, which GCC leaves to scalar moves.
__attribute__((target("arch=x86-64-v3"))) inline void transpose_block_float(
    const float* source, int64_t from_stride, float* target, int64_t to_stride) {
  __m256 r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(source + k * from_stride);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);      // x = 0 1 4 5 of channels k, k + 1
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);  // x = 2 3 6 7
  }
  for (int k = 0; k < 8; k += 4) {
    r[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);          // x = 0, 4 of channels k..k+3
    r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);      // x = 1, 5
    r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);  // x = 2, 6
    r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);  // x = 3, 7
  }
  for (int x = 0; x < 4; ++x) {
    _mm256_storeu_ps(target + x * to_stride, _mm256_permute2f128_ps(r[x], r[x + 4], 0x20));
    _mm256_storeu_ps(target + (x + 4) * to_stride, _mm256_permute2f128_ps(r[x], r[x + 4], 0x31));
  }
}

// The whole 8 x 8 float blocks' transposes, eight of the rows lying far apart (the input's
// channel planes, or the output's) at a time, so that they are streamed in order rather than
// touched a few bytes each in turn: reading the input's planes, eight channels over all the
// pixels; writing the output's, eight channels over all the pixels of the block (on these
// machines the other order made the output's transpose 4x slower per element).
__attribute__((target("arch=x86-64-v3"))) void transpose_rows_float(
    const float* from, int64_t from_stride, int64_t channels, int64_t count, float* to,
    int64_t to_stride) {
  if (to_stride > from_stride) {
    for (int64_t x0 = 0; x0 + 8 <= count; x0 += 8) {
      for (int64_t c0 = 0; c0 + 8 <= channels; c0 += 8) {
        transpose_block_float(from + c0 * from_stride + x0, from_stride,
                              to + x0 * to_stride + c0, to_stride);
      }
    }
  } else {
    for (int64_t c0 = 0; c0 + 8 <= channels; c0 += 8) {
      for (int64_t x0 = 0; x0 + 8 <= count; x0 += 8) {
        transpose_block_float(from + c0 * from_stride + x0, from_stride,
                              to + x0 * to_stride + c0, to_stride);
      }
    }
  }
  transpose_edges(from, from_stride, channels, count, to, to_stride);
}

__attribute__((target("default")))
#endif
void transpose_rows_float(const float* from, int64_t from_stride, int64_t channels,
                          int64_t count, float* to, int64_t to_stride) {
  transpose_blocks(from, from_stride, channels, count, to, to_stride);
  transpose_edges(from, from_stride, channels, count, to, to_stride);
}

MMLSTRIDE_CLONES_FOR_AVX2 void transpose_rows_double(const double* from, int64_t from_stride,
                                                     int64_t channels, int64_t count, double* to,
                                                     int64_t to_stride) {
  transpose_blocks(from, from_stride, channels, count, to, to_stride);
  transpose_edges(from, from_stride, channels, count, to, to_stride);
}

inline void transpose(const float* from, int64_t from_stride, int64_t channels, int64_t count,
                      float* to, int64_t to_stride) {
  transpose_rows_float(from, from_stride, channels, count, to, to_stride);
}

inline void transpose(const double* from, int64_t from_stride, int64_t channels,
                      int64_t count, double* to, int64_t to_stride) {
  transpose_rows_double(from, from_stride, channels, count, to, to_stride);
}

// The input rows a tile's image parts read, copied channels-last (part k's rows
// [first[k], last[k]] at rows + offset[k]; none when last < first), with the tile's axis
// tables: what the pixel-major sampling reads.
template <typename T>
struct ChannelsLastRows {
  const LSConvGeometry& g;
  AxisTable<T> h, w;
  int64_t row_begin, first_image;
  std::vector<int64_t> first, last, offset;
  const T* rows;

  // Copies the rows into rows_buffer (replaced by a larger one when too small), each thread
  // taking whole blocks of 8 channels: 8 contiguous streams to read.
  ChannelsLastRows(const T* input, const LSConvGeometry& geometry, const RealStride& stride,
                   int64_t row_begin_, int64_t row_end, at::Tensor& rows_buffer)
      : g(geometry),
        h(g.kernel_h, g.out_h, stride.h, stride.phase_h, g.pad_h, g.dilation_h, g.height),
        w(g.kernel_w, g.out_w, stride.w, stride.phase_w, g.pad_w, g.dilation_w, g.width),
        row_begin(row_begin_) {
    const int64_t channels = g.channels;
    const int64_t plane = g.height * g.width;
    const int64_t row_size = g.width * channels;
    const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
    const int64_t nparts = static_cast<int64_t>(parts.size());
    first_image = parts[0].image;
    first.assign(nparts, 0);
    last.assign(nparts, -1);
    offset.assign(nparts + 1, 0);
    for (int64_t k = 0; k < nparts; ++k) {
      if (plane > 0) rows_used(h, g, parts[k].a_begin, parts[k].a_end, first[k], last[k]);
      offset[k + 1] = offset[k] + std::max<int64_t>(0, last[k] - first[k] + 1) * row_size;
    }
    if (rows_buffer.numel() < offset[nparts]) {  // a new buffer: resize_ would copy the old
      rows_buffer = at::empty({offset[nparts]}, rows_buffer.options());
    }
    T* buffer = rows_buffer.mutable_data_ptr<T>();
    rows = buffer;
    for (int64_t k = 0; k < nparts; ++k) {
      const T* image = input + parts[k].image * channels * plane;
      const int64_t count = (last[k] - first[k] + 1) * g.width;  // contiguous in each plane
      if (count <= 0) continue;
      at::parallel_for(0, (channels + 7) / 8, 1, [&](int64_t begin, int64_t end) {
        const int64_t c_begin = begin * 8;
        const int64_t c_end = std::min(channels, end * 8);
        transpose(image + c_begin * plane + first[k] * g.width, plane, c_end - c_begin, count,
                  buffer + offset[k] + c_begin, channels);
      });
    }
  }
};

// The samples of the tile's pixel `pixel`, written to `out` pixel-major for `groups` groups
// (ls_conv_kernels.h): for each tap one blend of the four neighbours' runs over channels,
// with weights that are products of the two axis tables', as in MMCV's bilinear sample.
template <typename T>
inline void sample_pixel(const ChannelsLastRows<T>& s, int64_t pixel, int64_t groups, T* out) {
  const LSConvGeometry& g = s.g;
  const int64_t channels = g.channels;
  const int64_t group_channels = channels / groups;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t row_size = g.width * channels;
  const int64_t row = s.row_begin + pixel / g.out_w;
  const int64_t b = pixel % g.out_w;
  const int64_t k = row / g.out_h - s.first_image;
  const int64_t a = row % g.out_h;
  if (s.last[k] < s.first[k]) {  // every sample is 0
    std::fill(out, out + channels * taps, T(0));
    return;
  }
  const T* part_rows = s.rows + s.offset[k];
  for (int64_t i = 0; i < g.kernel_h; ++i) {
    const int64_t hk = i * g.out_h + a;
    const T hl = s.h.weight_low[hk];
    const T hh = s.h.weight_high[hk];
    // Rows with weight 0 may lie outside [first, last]: read row `first` instead.
    const T* row_low = part_rows + (hl != T(0) ? s.h.low[hk] - s.first[k] : 0) * row_size;
    const T* row_high = part_rows + (hh != T(0) ? s.h.high[hk] - s.first[k] : 0) * row_size;
    for (int64_t j = 0; j < g.kernel_w; ++j) {
      const int64_t wk = j * g.out_w + b;
      const T w00 = hl * s.w.weight_low[wk];
      const T w01 = hl * s.w.weight_high[wk];
      const T w10 = hh * s.w.weight_low[wk];
      const T w11 = hh * s.w.weight_high[wk];
      const T* x00 = row_low + s.w.low[wk] * channels;
      const T* x01 = row_low + s.w.high[wk] * channels;
      const T* x10 = row_high + s.w.low[wk] * channels;
      const T* x11 = row_high + s.w.high[wk] * channels;
      T* tap_out = out + (i * g.kernel_w + j) * group_channels;
      for (int64_t c0 = 0; c0 < channels; c0 += group_channels) {
        T* dst = tap_out + c0 * taps;
#pragma omp simd
        for (int64_t c = c0; c < c0 + group_channels; ++c) {
          dst[c - c0] = w00 * x00[c] + w01 * x01[c] + w10 * x10[c] + w11 * x11[c];
        }
      }
    }
  }
}

// Pixel-major columns of the tile's pixels [begin, end), pixel `begin` at `out`.
template <typename T>
inline void sample_pixel_major(const ChannelsLastRows<T>& s, int64_t groups, int64_t begin,
                               int64_t end, T* out) {
  const int64_t size = s.g.channels * s.g.kernel_h * s.g.kernel_w;
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    sample_pixel(s, pixel, groups, out + (pixel - begin) * size);
  }
}

// Channel-major columns (ncols of them, ls_conv_kernels.h) of the tile's pixels [begin, end),
// sampled pixel-major 8 pixels at a time into `block` (8 * C * taps), then transposed per tap.
template <typename T>
inline void sample_channel_major(const ChannelsLastRows<T>& s, int64_t begin, int64_t end,
                                 T* block, T* columns, int64_t ncols) {
  const int64_t channels = s.g.channels;
  const int64_t taps = s.g.kernel_h * s.g.kernel_w;
  for (int64_t pixel0 = begin; pixel0 < end; pixel0 += 8) {
    const int64_t count = std::min<int64_t>(8, end - pixel0);
    sample_pixel_major(s, /*groups=*/1, pixel0, pixel0 + count, block);
    for (int64_t tap = 0; tap < taps; ++tap) {  // column row c * taps + tap, from `count` pixels
      transpose(block + tap * channels, taps * channels, count, channels,
                columns + tap * ncols + pixel0, taps * ncols);
    }
  }
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_pixel_major_float(const ChannelsLastRows<float>& s,
                                                        int64_t groups, int64_t begin,
                                                        int64_t end, float* out) {
  sample_pixel_major(s, groups, begin, end, out);
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_pixel_major_double(const ChannelsLastRows<double>& s,
                                                         int64_t groups, int64_t begin,
                                                         int64_t end, double* out) {
  sample_pixel_major(s, groups, begin, end, out);
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_channel_major_float(const ChannelsLastRows<float>& s,
                                                          int64_t begin, int64_t end,
                                                          float* block, float* columns,
                                                          int64_t ncols) {
  sample_channel_major(s, begin, end, block, columns, ncols);
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_channel_major_double(const ChannelsLastRows<double>& s,
                                                           int64_t begin, int64_t end,
                                                           double* block, double* columns,
                                                           int64_t ncols) {
  sample_channel_major(s, begin, end, block, columns, ncols);
}

inline void sample(const ChannelsLastRows<float>& s, int64_t groups, int64_t begin, int64_t end,
                   float* out) {
  sample_pixel_major_float(s, groups, begin, end, out);
}

inline void sample(const ChannelsLastRows<double>& s, int64_t groups, int64_t begin,
                   int64_t end, double* out) {
  sample_pixel_major_double(s, groups, begin, end, out);
}

inline void sample(const ChannelsLastRows<float>& s, int64_t begin, int64_t end, float* block,
                   float* columns, int64_t ncols) {
  sample_channel_major_float(s, begin, end, block, columns, ncols);
}

inline void sample(const ChannelsLastRows<double>& s, int64_t begin, int64_t end,
                   double* block, double* columns, int64_t ncols) {
  sample_channel_major_double(s, begin, end, block, columns, ncols);
}

// The tile's channel-major columns (ls_conv_im2col_cpu), from its rows copied channels-last.
template <typename T>
void im2col_kernel(const T* input, const LSConvGeometry& g, const RealStride& stride,
                   int64_t row_begin, int64_t row_end, T* columns, at::Tensor& rows_buffer) {
  const ChannelsLastRows<T> rows(input, g, stride, row_begin, row_end, rows_buffer);
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  // Work items of 8 pixels: whole blocks for the transposes.
  at::parallel_for(0, (ncols + 7) / 8, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> block(8 * g.channels * g.kernel_h * g.kernel_w);
    sample(rows, begin * 8, std::min(ncols, end * 8), block.data(), columns, ncols);
  });
}

// A buffer of at least `numel` elements kept by the calling thread from call to call (slot
// 0: the input rows, 1: the columns, 2: the product), so that the forward's scratch, a few MiB
// per thread, is not mapped and faulted in afresh on every call: on these machines that cost
// the fused forward 10-25% of its time.
template <typename T>
at::Tensor& thread_scratch(int slot, int64_t numel, const at::TensorOptions& options) {
  thread_local std::array<at::Tensor, 3> buffers;
  at::Tensor& buffer = buffers[slot];
  if (!buffer.defined() || buffer.numel() < numel) {
    buffer = at::empty({std::max<int64_t>(numel, 1)}, options);
  }
  return buffer;
}

// The forward (ls_conv_forward_pixels_cpu). Each work item is a band of output rows: its
// thread copies the input rows the band reads channels-last, then, per block of pixels,
// samples their pixel-major columns into a buffer that stays in the core's cache, multiplies
// it by the weight (one GEMM per group, with the bias) and writes the product, transposed,
// into the output. No thread waits for another.
template <typename T>
void forward_pixels_kernel(const at::Tensor& input, const at::Tensor& weight_taps,
                           const optional<at::Tensor>& bias, const LSConvGeometry& g,
                           const RealStride& stride, int64_t groups, at::Tensor& output) {
  const int64_t out_channels = weight_taps.size(0);
  const int64_t group_out = out_channels / groups;
  const int64_t col_size = g.channels * g.kernel_h * g.kernel_w;
  const int64_t group_cols = col_size / groups;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t total_rows = input.size(0) * g.out_h;
  // Bands of about 2048 pixels, a multiple of 8 of them (as many for 2, 4 or 8 threads),
  // and blocks of about 1024 pixels, fewer where their columns would pass 4 MiB (at least
  // 256): the same GEMMs, so the same sums, whatever the thread count. (With oneDNN's
  // products, blocks of 512-1024 pixels ran 4-8% faster than 256 on det-200, r50-s2 and
  // r50-s3; bands of 1024 or 4096 pixels no faster.)
  constexpr int64_t kBandPixels = 2048;
  const int64_t block_pixels = std::clamp<int64_t>(
      (int64_t(4) << 20) / (col_size * static_cast<int64_t>(sizeof(T))), 256, 1024);
  const int64_t bands = std::min(
      total_rows, (std::max<int64_t>(1, total_rows * g.out_w / kBandPixels) + 7) / 8 * 8);
  const int64_t band_cols = (total_rows + bands - 1) / bands * g.out_w;  // at most
  const int64_t band_blocks =
      std::max<int64_t>(1, (band_cols + block_pixels / 2) / block_pixels);
  const int64_t block = (band_cols + band_blocks - 1) / band_blocks;
  const bool onednn = ls_conv_onednn_matmul_cpu(input);
  T* out = output.mutable_data_ptr<T>();
  at::parallel_for(0, bands, 1, [&](int64_t band_begin, int64_t band_end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // in every thread of the call
    at::Tensor& rows_buffer = thread_scratch<T>(0, 0, input.options());
    const at::Tensor columns = thread_scratch<T>(1, block * col_size, input.options())
                                   .narrow(0, 0, block * col_size)
                                   .view({block, col_size});
    const at::Tensor product = thread_scratch<T>(2, block * out_channels, input.options())
                                   .narrow(0, 0, block * out_channels)
                                   .view({block, out_channels});
    for (int64_t band = band_begin; band < band_end; ++band) {
      const int64_t row_begin = band * total_rows / bands;
      const int64_t row_end = (band + 1) * total_rows / bands;
      const int64_t ncols = (row_end - row_begin) * g.out_w;
      const ChannelsLastRows<T> rows(input.const_data_ptr<T>(), g, stride, row_begin, row_end,
                                     rows_buffer);
      for (int64_t begin = 0; begin < ncols; begin += block) {
        const int64_t end = std::min(ncols, begin + block);
        sample(rows, groups, begin, end, columns.mutable_data_ptr<T>());
        // With one group, oneDNN's product is transposed into the output where it lies.
        at::Tensor whole_product = product;
        for (int64_t group = 0; group < groups; ++group) {
          at::Tensor target = product.narrow(0, 0, end - begin)
                                  .narrow(1, group * group_out, group_out);
          const at::Tensor columns_g =
              columns.narrow(0, 0, end - begin).narrow(1, group * group_cols, group_cols);
          const at::Tensor weight_g = weight_taps.narrow(0, group * group_out, group_out);
          const optional<at::Tensor> bias_g =
              bias ? optional<at::Tensor>(bias->narrow(0, group * group_out, group_out))
                   : nullopt;
          if (onednn && groups == 1) {
            whole_product = ls_conv_onednn_linear_cpu(columns_g, weight_g, bias_g);
          } else if (onednn) {
            target.copy_(ls_conv_onednn_linear_cpu(columns_g, weight_g, bias_g));
          } else if (bias_g) {
            at::addmm_out(target, bias_g->expand_as(target), columns_g, weight_g.t());
          } else {
            at::mm_out(target, columns_g, weight_g.t());
          }
        }
        // Pixel p of the band is output position (row_begin * out_w + p) of the batch.
        const T* from = whole_product.const_data_ptr<T>();
        for (int64_t pixel = begin; pixel < end;) {
          const int64_t index = row_begin * g.out_w + pixel;
          const int64_t image = index / out_plane;
          const int64_t position = index % out_plane;
          const int64_t count = std::min(end - pixel, out_plane - position);
          transpose(from + (pixel - begin) * out_channels, out_channels, count, out_channels,
                    out + image * out_channels * out_plane + position, out_plane);
          pixel += count;
        }
      }
    }
  });
}

// One output row of one tap, pulled back along h: adds the weighted gradient to
// the two input rows it samples (grad_low, grad_high, which may be the same row);
// when kColumns writes the row's samples (im2col) to `column`; when kStride
// returns sum_b grad[b] * d sample / d h.
template <typename T, bool kStride, bool kColumns>
inline T pull_back_row(const T* grad, int64_t n, T wl, T wh, T sl, T sh, T* grad_low,
                       T* grad_high, const T* value_low, const T* value_high, T* column) {
  T dot = T(0);
#pragma omp simd reduction(+ : dot)
  for (int64_t b = 0; b < n; ++b) {
    grad_low[b] += wl * grad[b];
    grad_high[b] += wh * grad[b];
    if (kStride) dot += grad[b] * (sl * value_low[b] + sh * value_high[b]);
    if (kColumns) column[b] = wl * value_low[b] + wh * value_high[b];
  }
  return dot;
}

// The backward sampling of one input plane (one channel of one image part); the phase's
// sums only when kPhase (with kStride), so that a call without a phase gradient does the
// stride's work alone.
template <typename T, bool kStride, bool kPhase, bool kColumns>
void backward_plane(const T* grad_columns, const T* im, const LSConvGeometry& g,
                    const AxisTable<T>& h, const AxisTable<T>& w, const ImageRows& part,
                    int64_t c, int64_t ncols, int64_t first, int64_t last, T* grad_im,
                    double* partial, T* columns, std::vector<T>& grad_w, std::vector<T>& value_w,
                    std::vector<T>& slope_w, std::vector<T>& moment_w) {
  const int64_t rows = last - first + 1;
  grad_w.resize(rows * g.out_w);
  if (kStride || kColumns) value_w.resize(rows * g.out_w);
  if (kStride) moment_w.resize(rows * g.out_w);
  if (kPhase) slope_w.resize(rows * g.out_w);
  // d L / d (stride_h, stride_w, phase_h, phase_w) from this plane.
  double sum_h = 0.0, sum_w = 0.0, phase_sum_h = 0.0, phase_sum_w = 0.0;
  for (int64_t j = 0; j < g.kernel_w; ++j) {
    const int64_t wk = j * g.out_w;
    if (kStride || kColumns) {
      interpolate_rows<T, kStride, kPhase>(im, g, first, last, w, wk, value_w.data(),
                                           slope_w.data(), moment_w.data());
    }
    // grad_w[r][b]: the tap column's gradient pulled back along h onto input row r.
    std::fill(grad_w.begin(), grad_w.end(), T(0));
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t row = (c * g.kernel_h + i) * g.kernel_w + j;
      const T* grad = grad_columns + row * ncols + part.column;
      T* column = kColumns ? columns + row * ncols + part.column : nullptr;
      for (int64_t a = part.a_begin; a < part.a_end; ++a, grad += g.out_w) {
        const int64_t k = i * g.out_h + a;
        // A neighbour outside the image has weight and slope 0: use row `first`.
        const int64_t lo = (is_used(h, k, true) ? h.low[k] - first : 0) * g.out_w;
        const int64_t hi = (is_used(h, k, false) ? h.high[k] - first : 0) * g.out_w;
        const T dot = pull_back_row<T, kStride, kColumns>(
            grad, g.out_w, h.weight_low[k], h.weight_high[k], h.slope_low[k], h.slope_high[k],
            grad_w.data() + lo, grad_w.data() + hi, value_w.data() + lo, value_w.data() + hi,
            column);
        // The sample position moves by a per unit of s_h, by 1 per unit of t_h.
        if (kStride) sum_h += double(a) * double(dot);
        if (kPhase) phase_sum_h += double(dot);
        if (kColumns) column += g.out_w;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const T* grad = grad_w.data() + r * g.out_w;
      if (kStride) {
        // d sample / d w is the slope along w blended along h.
        const T* moment = moment_w.data() + r * g.out_w;
        T dot = T(0);
#pragma omp simd reduction(+ : dot)
        for (int64_t b = 0; b < g.out_w; ++b) dot += moment[b] * grad[b];
        sum_w += double(dot);
      }
      if (kPhase) {
        const T* slope = slope_w.data() + r * g.out_w;
        T phase_dot = T(0);
#pragma omp simd reduction(+ : phase_dot)
        for (int64_t b = 0; b < g.out_w; ++b) phase_dot += slope[b] * grad[b];
        phase_sum_w += double(phase_dot);
      }
      if (grad_im) {
        T* grad_row = grad_im + (first + r) * g.width;
        const int* low = &w.low[wk];
        const int* high = &w.high[wk];
        const T* wl = &w.weight_low[wk];
        const T* wh = &w.weight_high[wk];
        for (int64_t b = 0; b < g.out_w; ++b) {
          grad_row[low[b]] += wl[b] * grad[b];
          grad_row[high[b]] += wh[b] * grad[b];
        }
      }
    }
  }
  if (kStride) {
    partial[0] += sum_h;
    partial[1] += sum_w;
  }
  if (kPhase) {
    partial[2] += phase_sum_h;
    partial[3] += phase_sum_w;
  }
}

template <typename T>
void backward_kernel(const T* grad_columns, const T* input, const LSConvGeometry& g,
                     const RealStride& stride, int64_t row_begin, int64_t row_end, T* grad_input,
                     double* stride_partials, bool phase_gradient, T* columns) {
  const AxisTable<T> h(g.kernel_h, g.out_h, stride.h, stride.phase_h, g.pad_h, g.dilation_h,
                       g.height);
  const AxisTable<T> w(g.kernel_w, g.out_w, stride.w, stride.phase_w, g.pad_w, g.dilation_w,
                       g.width);
  const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
  const int64_t plane = g.height * g.width;
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t nparts = static_cast<int64_t>(parts.size());
  // One work item: one channel of one image's rows. It owns its input plane's
  // grad_input and stride partial (a tile holds one part per image), so there
  // are no write conflicts.
  at::parallel_for(0, g.channels * nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> grad_w, value_w, slope_w, moment_w;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item / nparts;
      const ImageRows& part = parts[item % nparts];
      int64_t first = 0, last = -1;
      if (plane > 0) rows_used(h, g, part.a_begin, part.a_end, first, last);
      const int64_t plane_index = part.image * g.channels + c;
      if (last < first) {  // every sample is 0, and so is every gradient
        if (columns) {
          for (int64_t tap = 0; tap < g.kernel_h * g.kernel_w; ++tap) {
            T* column = columns + (c * g.kernel_h * g.kernel_w + tap) * ncols + part.column;
            std::fill(column, column + (part.a_end - part.a_begin) * g.out_w, T(0));
          }
        }
        continue;
      }
      const T* im = input + plane_index * plane;
      T* grad_im = grad_input ? grad_input + plane_index * plane : nullptr;
      double* partial = stride_partials ? stride_partials + 4 * plane_index : nullptr;
#define LSCONV_BACKWARD_PLANE(kStride, kPhase, kColumns)                                   \
  backward_plane<T, kStride, kPhase, kColumns>(grad_columns, im, g, h, w, part, c, ncols,    \
                                               first, last, grad_im, partial, columns, grad_w, \
                                               value_w, slope_w, moment_w)
      if (partial && phase_gradient && columns) {
        LSCONV_BACKWARD_PLANE(true, true, true);
      } else if (partial && phase_gradient) {
        LSCONV_BACKWARD_PLANE(true, true, false);
      } else if (partial && columns) {
        LSCONV_BACKWARD_PLANE(true, false, true);
      } else if (partial) {
        LSCONV_BACKWARD_PLANE(true, false, false);
      } else if (columns) {
        LSCONV_BACKWARD_PLANE(false, false, true);
      } else {
        LSCONV_BACKWARD_PLANE(false, false, false);
      }
#undef LSCONV_BACKWARD_PLANE
    }
  });
}

}  // namespace

PreparedStride ls_conv_prepare_cpu(const at::Tensor& stride, const at::Tensor& phase,
                                   const LSConvGeometry& geometry, int64_t batch,
                                   bool stride_gradient) {
  const at::Tensor values = stride.detach().to(at::kCPU, at::kDouble).contiguous();
  const double stride_h = values.const_data_ptr<double>()[0];
  const double stride_w = values.const_data_ptr<double>()[1];
  TORCH_CHECK_VALUE(
      std::isfinite(stride_h) && std::isfinite(stride_w) && stride_h > 0 && stride_w > 0,
      "stride=(", stride_h, ", ", stride_w, ") expected finite values > 0");
  PreparedStride prepared;
  prepared.values = RealStride{stride_h, stride_w};
  if (phase.defined()) {
    const at::Tensor phase_values = phase.detach().to(at::kCPU, at::kDouble).contiguous();
    const double phase_h = phase_values.const_data_ptr<double>()[0];
    const double phase_w = phase_values.const_data_ptr<double>()[1];
    TORCH_CHECK_VALUE(std::isfinite(phase_h) && std::isfinite(phase_w), "phase=(", phase_h,
                      ", ", phase_w, ") expected finite values");
    prepared.values.phase_h = phase_h;
    prepared.values.phase_w = phase_w;
  }
  if (stride_gradient) {
    prepared.partials =
        at::zeros({batch * geometry.channels, 4}, stride.options().dtype(at::kDouble));
  }
  return prepared;
}

void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                        const at::Tensor& columns) {
  at::Tensor rows_buffer = at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_im2col_cpu", [&] {
    im2col_kernel<scalar_t>(input.const_data_ptr<scalar_t>(), geometry, stride.values,
                            row_begin, row_end, columns.mutable_data_ptr<scalar_t>(),
                            rows_buffer);
  });
}

void ls_conv_forward_pixels_cpu(const at::Tensor& input, const at::Tensor& weight_taps,
                                const optional<at::Tensor>& bias,
                                const LSConvGeometry& geometry, const PreparedStride& stride,
                                int64_t groups, at::Tensor& output) {
  RECORD_FUNCTION("mmlstride::forward_pixels", std::vector<c10::IValue>());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_forward_pixels_cpu", [&] {
    forward_pixels_kernel<scalar_t>(input, weight_taps, bias, geometry, stride.values, groups,
                                    output);
  });
}

void ls_conv_backward_sampling_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                   const LSConvGeometry& geometry, const PreparedStride& stride,
                                   int64_t row_begin, int64_t row_end,
                                   const at::Tensor& grad_input, bool stride_gradient,
                                   const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_backward_sampling_cpu", [&] {
    backward_kernel<scalar_t>(
        grad_columns.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), geometry,
        stride.values, row_begin, row_end,
        grad_input.defined() ? grad_input.mutable_data_ptr<scalar_t>() : nullptr,
        stride_gradient ? stride.partials.mutable_data_ptr<double>() : nullptr,
        stride_gradient && stride.phase_gradient,
        columns.defined() ? columns.mutable_data_ptr<scalar_t>() : nullptr);
  });
}

}  // namespace mmlstride

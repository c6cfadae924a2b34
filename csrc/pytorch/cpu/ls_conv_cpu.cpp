// CPU kernels of the learnable-stride convolution: the forward's columns in
// either layout (channel-major im2col, or pixel-major from channels-last input
// rows), and the col2im scatter fused with the stride-gradient reduction.
//
// The channel-major im2col and the backward use the separability of the bilinear sample (ls_conv_sampling.h): for a
// kernel column j, every input row needed by the tile is first interpolated
// along w at the out_w sample columns (a gather), then each (i, a) output row
// is a two-row blend along h, contiguous in b and vectorised. The backward
// pass runs the same two passes transposed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../ls_conv_kernels.h"

namespace mmlstride {
namespace {

// Interpolation along one axis for every (tap, output index), tap-major, as
// structure of arrays (see AxisSample).
template <typename T>
struct AxisTable {
  std::vector<int> low, high;
  std::vector<T> weight_low, weight_high, slope_low, slope_high;

  AxisTable(int64_t taps, int64_t outs, double stride, int64_t pad, int64_t dilation,
            int64_t size)
      : low(taps * outs), high(taps * outs), weight_low(taps * outs), weight_high(taps * outs),
        slope_low(taps * outs), slope_high(taps * outs) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t out = 0; out < outs; ++out) {
        const auto s = axis_sample<T>(sample_position(out, tap, stride, pad, dilation), size);
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
// the input rows r in [first, last]: value[r - first][b] with the weights, and
// when kSlope b times its derivative, moment[r - first][b], from one gather (the
// sample position moves by b per unit of s_w).
template <typename T, bool kSlope>
void interpolate_rows(const T* im, const LSConvGeometry& g, int64_t first, int64_t last,
                      const AxisTable<T>& w, int64_t wk, T* value, T* moment) {
  const int* low = &w.low[wk];
  const int* high = &w.high[wk];
  const T* wl = &w.weight_low[wk];
  const T* wh = &w.weight_high[wk];
  const T* sl = &w.slope_low[wk];
  const T* sh = &w.slope_high[wk];
  for (int64_t r = first; r <= last; ++r) {
    const T* row = im + r * g.width;
    T* value_row = value + (r - first) * g.out_w;
    T* moment_row = kSlope ? moment + (r - first) * g.out_w : nullptr;
    for (int64_t b = 0; b < g.out_w; ++b) {
      const T x_low = row[low[b]];
      const T x_high = row[high[b]];
      value_row[b] = wl[b] * x_low + wh[b] * x_high;
      if (kSlope) moment_row[b] = T(b) * (sl[b] * x_low + sh[b] * x_high);
    }
  }
}

// The columns of one input plane (one channel of one image part) whose used
// input rows are [first, last]; along_w holds (last - first + 1) * out_w.
template <typename T>
void im2col_plane(const T* im, const LSConvGeometry& g, const AxisTable<T>& h,
                  const AxisTable<T>& w, const ImageRows& part, int64_t c, int64_t ncols,
                  int64_t first, int64_t last, T* columns, T* along_w) {
  for (int64_t j = 0; j < g.kernel_w; ++j) {
    interpolate_rows<T, false>(im, g, first, last, w, j * g.out_w, along_w, nullptr);
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      T* out = columns + ((c * g.kernel_h + i) * g.kernel_w + j) * ncols + part.column;
      for (int64_t a = part.a_begin; a < part.a_end; ++a, out += g.out_w) {
        const int64_t k = i * g.out_h + a;
        const T wl = h.weight_low[k];
        const T wh = h.weight_high[k];
        // Rows with weight 0 may lie outside [first, last]: read row `first` instead.
        const T* lo = along_w + (wl != T(0) ? h.low[k] - first : 0) * g.out_w;
        const T* hi = along_w + (wh != T(0) ? h.high[k] - first : 0) * g.out_w;
#pragma omp simd
        for (int64_t b = 0; b < g.out_w; ++b) out[b] = wl * lo[b] + wh * hi[b];
      }
    }
  }
}

template <typename T>
void im2col_kernel(const T* input, const LSConvGeometry& g, const RealStride& stride,
                   int64_t row_begin, int64_t row_end, T* columns) {
  const AxisTable<T> h(g.kernel_h, g.out_h, stride.h, g.pad_h, g.dilation_h, g.height);
  const AxisTable<T> w(g.kernel_w, g.out_w, stride.w, g.pad_w, g.dilation_w, g.width);
  const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
  const int64_t plane = g.height * g.width;
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t nparts = static_cast<int64_t>(parts.size());
  // One work item: one channel of one image's rows; it writes kh * kw column rows.
  at::parallel_for(0, g.channels * nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> along_w;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item / nparts;
      const ImageRows& part = parts[item % nparts];
      int64_t first = 0, last = -1;
      if (plane > 0) rows_used(h, g, part.a_begin, part.a_end, first, last);
      const int64_t span = (part.a_end - part.a_begin) * g.out_w;
      if (last < first) {  // every sample is 0
        for (int64_t tap = 0; tap < g.kernel_h * g.kernel_w; ++tap) {
          T* out = columns + (c * g.kernel_h * g.kernel_w + tap) * ncols + part.column;
          std::fill(out, out + span, T(0));
        }
        continue;
      }
      along_w.resize((last - first + 1) * g.out_w);
      im2col_plane(input + (part.image * g.channels + c) * plane, g, h, w, part, c, ncols, first,
                   last, columns, along_w.data());
    }
  });
}

// Compiles a function for x86-64-v3 (AVX2, FMA) too, picked at load time where the CPU has
// it; the baseline build targets SSE2 only.
// target_clones needs GNU ifunc: glibc on Linux (not musl, not Mach-O).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    defined(__linux__) && defined(__GLIBC__)
#define MMLSTRIDE_CLONES_FOR_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MMLSTRIDE_CLONES_FOR_AVX2
#endif

// to[x * to_stride + c] = from[c * from_stride + x] for c < channels, x < count (a matrix
// transposed, e.g. input rows of several channels written channels-last), in 8 x 8 blocks
// that the compiler keeps in registers.
template <typename T>
inline void transpose_rows(const T* from, int64_t from_stride, int64_t channels, int64_t count,
                           T* to, int64_t to_stride) {
  constexpr int64_t kBlock = 8;
  int64_t c0 = 0;
  for (; c0 + kBlock <= channels; c0 += kBlock) {
    int64_t x0 = 0;
    for (; x0 + kBlock <= count; x0 += kBlock) {
      T block[kBlock][kBlock];
      for (int64_t c = 0; c < kBlock; ++c) {
        for (int64_t x = 0; x < kBlock; ++x) block[x][c] = from[(c0 + c) * from_stride + x0 + x];
      }
      for (int64_t x = 0; x < kBlock; ++x) {
        for (int64_t c = 0; c < kBlock; ++c) to[(x0 + x) * to_stride + c0 + c] = block[x][c];
      }
    }
    for (int64_t c = c0; c < c0 + kBlock; ++c) {
      for (int64_t x = x0; x < count; ++x) to[x * to_stride + c] = from[c * from_stride + x];
    }
  }
  for (int64_t c = c0; c < channels; ++c) {
    for (int64_t x = 0; x < count; ++x) to[x * to_stride + c] = from[c * from_stride + x];
  }
}

MMLSTRIDE_CLONES_FOR_AVX2 void transpose_rows_float(const float* from, int64_t from_stride,
                                                    int64_t channels, int64_t count, float* to,
                                                    int64_t to_stride) {
  transpose_rows(from, from_stride, channels, count, to, to_stride);
}

MMLSTRIDE_CLONES_FOR_AVX2 void transpose_rows_double(const double* from, int64_t from_stride,
                                                     int64_t channels, int64_t count, double* to,
                                                     int64_t to_stride) {
  transpose_rows(from, from_stride, channels, count, to, to_stride);
}

inline void transpose(const float* from, int64_t from_stride, int64_t channels, int64_t count,
                      float* to, int64_t to_stride) {
  transpose_rows_float(from, from_stride, channels, count, to, to_stride);
}

inline void transpose(const double* from, int64_t from_stride, int64_t channels,
                      int64_t count, double* to, int64_t to_stride) {
  transpose_rows_double(from, from_stride, channels, count, to, to_stride);
}

// What sample_pixels reads and writes: the tile's input rows copied channels-last (image
// part k's rows [first[k], last[k]] at rows + offset[k]) and its pixel-major columns.
template <typename T>
struct PixelSampling {
  const LSConvGeometry* g;
  const AxisTable<T>* h;
  const AxisTable<T>* w;
  int64_t groups, row_begin, first_image;
  const T* rows;
  const int64_t* first;
  const int64_t* last;
  const int64_t* offset;
  T* columns;
};

// The columns of the tile's pixels [begin, end): for each tap one blend of the four
// neighbours' runs over channels, with weights that are products of the two axis tables'.
template <typename T>
inline void sample_pixels(const PixelSampling<T>& s, int64_t begin, int64_t end) {
  const LSConvGeometry& g = *s.g;
  const AxisTable<T>& h = *s.h;
  const AxisTable<T>& w = *s.w;
  const int64_t channels = g.channels;
  const int64_t group_channels = channels / s.groups;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t row_size = g.width * channels;
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    const int64_t row = s.row_begin + pixel / g.out_w;
    const int64_t b = pixel % g.out_w;
    const int64_t k = row / g.out_h - s.first_image;
    const int64_t a = row % g.out_h;
    T* out = s.columns + pixel * channels * taps;
    if (s.last[k] < s.first[k]) {  // every sample is 0
      std::fill(out, out + channels * taps, T(0));
      continue;
    }
    const T* part_rows = s.rows + s.offset[k];
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t hk = i * g.out_h + a;
      const T hl = h.weight_low[hk];
      const T hh = h.weight_high[hk];
      // Rows with weight 0 may lie outside [first, last]: read row `first` instead.
      const T* row_low = part_rows + (hl != T(0) ? h.low[hk] - s.first[k] : 0) * row_size;
      const T* row_high = part_rows + (hh != T(0) ? h.high[hk] - s.first[k] : 0) * row_size;
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const int64_t wk = j * g.out_w + b;
        const T w00 = hl * w.weight_low[wk];
        const T w01 = hl * w.weight_high[wk];
        const T w10 = hh * w.weight_low[wk];
        const T w11 = hh * w.weight_high[wk];
        const T* x00 = row_low + w.low[wk] * channels;
        const T* x01 = row_low + w.high[wk] * channels;
        const T* x10 = row_high + w.low[wk] * channels;
        const T* x11 = row_high + w.high[wk] * channels;
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
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_pixels_float(const PixelSampling<float>& s, int64_t begin,
                                                   int64_t end) {
  sample_pixels(s, begin, end);
}

MMLSTRIDE_CLONES_FOR_AVX2 void sample_pixels_double(const PixelSampling<double>& s,
                                                    int64_t begin, int64_t end) {
  sample_pixels(s, begin, end);
}

inline void sample(const PixelSampling<float>& s, int64_t begin, int64_t end) {
  sample_pixels_float(s, begin, end);
}

inline void sample(const PixelSampling<double>& s, int64_t begin, int64_t end) {
  sample_pixels_double(s, begin, end);
}

// The forward's columns in pixel-major layout (see ls_conv_pixel_columns_cpu). The input
// rows each image part of the tile reads are first copied channels-last into rows_buffer
// (kept across a call's tiles), so that each (pixel, tap) sample is one vectorised blend of
// four contiguous runs over channels. The four neighbours' weights are products of the two
// axis tables' weights, as in MMCV's bilinear sample.
template <typename T>
void pixel_columns_kernel(const T* input, const LSConvGeometry& g, const RealStride& stride,
                          int64_t groups, int64_t row_begin, int64_t row_end, T* columns,
                          at::Tensor& rows_buffer) {
  const AxisTable<T> h(g.kernel_h, g.out_h, stride.h, g.pad_h, g.dilation_h, g.height);
  const AxisTable<T> w(g.kernel_w, g.out_w, stride.w, g.pad_w, g.dilation_w, g.width);
  const int64_t channels = g.channels;
  const int64_t plane = g.height * g.width;
  const int64_t row_size = g.width * channels;  // one channels-last input row
  const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
  const int64_t nparts = static_cast<int64_t>(parts.size());
  // Part k reads input rows [first[k], last[k]] (none when last < first), copied to
  // rows[offset[k]...].
  std::vector<int64_t> first(nparts, 0), last(nparts, -1), offset(nparts + 1, 0);
  for (int64_t k = 0; k < nparts; ++k) {
    if (plane > 0) rows_used(h, g, parts[k].a_begin, parts[k].a_end, first[k], last[k]);
    offset[k + 1] = offset[k] + std::max<int64_t>(0, last[k] - first[k] + 1) * row_size;
  }
  if (rows_buffer.numel() < offset[nparts]) rows_buffer.resize_({offset[nparts]});
  T* rows = rows_buffer.mutable_data_ptr<T>();
  for (int64_t k = 0; k < nparts; ++k) {
    const T* image = input + parts[k].image * channels * plane;
    const int64_t count = (last[k] - first[k] + 1) * g.width;  // contiguous in each plane
    if (count <= 0) continue;
    // Each thread takes whole blocks of 8 channels: 8 contiguous streams to read.
    at::parallel_for(0, (channels + 7) / 8, 1, [&](int64_t begin, int64_t end) {
      const int64_t c_begin = begin * 8;
      const int64_t c_end = std::min(channels, end * 8);
      transpose(image + c_begin * plane + first[k] * g.width, plane, c_end - c_begin, count,
                rows + offset[k] + c_begin, channels);
    });
  }
  const PixelSampling<T> sampling{&g,    &h,           &w,          groups,        row_begin,
                                  parts[0].image, rows, first.data(), last.data(), offset.data(),
                                  columns};
  at::parallel_for(0, (row_end - row_begin) * g.out_w, 4, [&](int64_t begin, int64_t end) {
    sample(sampling, begin, end);
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

// The backward sampling of one input plane (one channel of one image part).
template <typename T, bool kStride, bool kColumns>
void backward_plane(const T* grad_columns, const T* im, const LSConvGeometry& g,
                    const AxisTable<T>& h, const AxisTable<T>& w, const ImageRows& part,
                    int64_t c, int64_t ncols, int64_t first, int64_t last, T* grad_im,
                    double* partial, T* columns, std::vector<T>& grad_w, std::vector<T>& value_w,
                    std::vector<T>& moment_w) {
  const int64_t rows = last - first + 1;
  grad_w.resize(rows * g.out_w);
  if (kStride || kColumns) value_w.resize(rows * g.out_w);
  if (kStride) moment_w.resize(rows * g.out_w);
  double sum_h = 0.0;
  double sum_w = 0.0;
  for (int64_t j = 0; j < g.kernel_w; ++j) {
    const int64_t wk = j * g.out_w;
    if (kStride || kColumns) {
      interpolate_rows<T, kStride>(im, g, first, last, w, wk, value_w.data(), moment_w.data());
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
        // The sample position moves by a per unit of s_h.
        if (kStride) sum_h += double(a) * double(dot);
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
}

template <typename T>
void backward_kernel(const T* grad_columns, const T* input, const LSConvGeometry& g,
                     const RealStride& stride, int64_t row_begin, int64_t row_end, T* grad_input,
                     double* stride_partials, T* columns) {
  const AxisTable<T> h(g.kernel_h, g.out_h, stride.h, g.pad_h, g.dilation_h, g.height);
  const AxisTable<T> w(g.kernel_w, g.out_w, stride.w, g.pad_w, g.dilation_w, g.width);
  const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
  const int64_t plane = g.height * g.width;
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t nparts = static_cast<int64_t>(parts.size());
  // One work item: one channel of one image's rows. It owns its input plane's
  // grad_input and stride partial (a tile holds one part per image), so there
  // are no write conflicts.
  at::parallel_for(0, g.channels * nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> grad_w, value_w, moment_w;
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
      double* partial = stride_partials ? stride_partials + 2 * plane_index : nullptr;
#define LSCONV_BACKWARD_PLANE(kStride, kColumns)                                             \
  backward_plane<T, kStride, kColumns>(grad_columns, im, g, h, w, part, c, ncols, first, last, \
                                       grad_im, partial, columns, grad_w, value_w, moment_w)
      if (partial && columns) {
        LSCONV_BACKWARD_PLANE(true, true);
      } else if (partial) {
        LSCONV_BACKWARD_PLANE(true, false);
      } else if (columns) {
        LSCONV_BACKWARD_PLANE(false, true);
      } else {
        LSCONV_BACKWARD_PLANE(false, false);
      }
#undef LSCONV_BACKWARD_PLANE
    }
  });
}

}  // namespace

PreparedStride ls_conv_prepare_cpu(const at::Tensor& stride, const LSConvGeometry& geometry,
                                   int64_t batch, bool stride_gradient) {
  const at::Tensor values = stride.detach().to(at::kCPU, at::kDouble).contiguous();
  const double stride_h = values.const_data_ptr<double>()[0];
  const double stride_w = values.const_data_ptr<double>()[1];
  TORCH_CHECK_VALUE(
      std::isfinite(stride_h) && std::isfinite(stride_w) && stride_h > 0 && stride_w > 0,
      "stride=(", stride_h, ", ", stride_w, ") expected finite values > 0");
  PreparedStride prepared;
  prepared.values = RealStride{stride_h, stride_w};
  if (stride_gradient) {
    prepared.partials = at::zeros({batch * geometry.channels, 2}, stride.options().dtype(at::kDouble));
  }
  return prepared;
}

void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                        const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_im2col_cpu", [&] {
    im2col_kernel<scalar_t>(input.const_data_ptr<scalar_t>(), geometry, stride.values, row_begin,
                            row_end, columns.mutable_data_ptr<scalar_t>());
  });
}

void ls_conv_pixel_columns_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                               const PreparedStride& stride, int64_t groups, int64_t row_begin,
                               int64_t row_end, const at::Tensor& columns,
                               at::Tensor& rows_buffer) {
  RECORD_FUNCTION("mmlstride::pixel_columns", std::vector<c10::IValue>());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_pixel_columns_cpu", [&] {
    pixel_columns_kernel<scalar_t>(input.const_data_ptr<scalar_t>(), geometry, stride.values,
                                   groups, row_begin, row_end,
                                   columns.mutable_data_ptr<scalar_t>(), rows_buffer);
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
        columns.defined() ? columns.mutable_data_ptr<scalar_t>() : nullptr);
  });
}

}  // namespace mmlstride

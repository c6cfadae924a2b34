// CPU kernels of the learnable-stride convolution: the forward (ls_conv_forward_bands_cpu)
// and the channel-major columns (im2col), both sampled straight from the input's planes
// (PlaneSampler), and the col2im scatter fused with the stride-gradient reduction.
//
// Both use the separability of the bilinear sample (ls_conv_sampling.h). The forward blends
// two input rows along h, then interpolates the blend along w at each kernel column's samples;
// the backward, for a kernel column j, first interpolates every input row needed by the tile
// along w at the out_w sample columns (a gather), then blends each (i, a) output row along h,
// contiguous in b and vectorised; it runs these two passes transposed.
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ls_conv_cpu.h"

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

// The interpolation along w by AVX-512 permutes (WindowChunk) is compiled where the compiler
// takes x86 target attributes, and runs where ATen's own kernels run at AVX-512
// (window_interpolation).
#if defined(__x86_64__) && defined(__GNUC__)
#define MMLSTRIDE_HAS_AVX512_WINDOWS 1
#endif

// Up to 16 consecutive samples of one kernel column whose neighbours lie in the 32 values of
// an input row from `base`: lane l is sample `first + l`, its neighbours at base + low[l] and
// base + high[l]; lanes of neighbours not used are masked out (the forward's: without
// weight; the backward's: outside the image, without weight and slope), and so are the
// window's values past the row's end (never read unmasked, so the window never leaves the
// input).
struct alignas(64) WindowChunk {
  int32_t low[16], high[16];
  float weight_low[16], weight_high[16], slope_low[16], slope_high[16];
  int32_t base, first, count;
  uint16_t low_mask, high_mask, load_mask_first, load_mask_second;
};

// Whether the float32 interpolation along w takes WindowChunks: on a CPU where ATen runs its
// own kernels at AVX-512 (torch.backends.cpu.get_cpu_capability(); ATEN_CPU_CAPABILITY=avx2 or
// default turns both off).
bool window_interpolation() {
#ifdef MMLSTRIDE_HAS_AVX512_WINDOWS
  static const bool enabled =
      at::get_cpu_capability().rfind("AVX512", 0) == 0 && __builtin_cpu_supports("avx512f");
  return enabled;
#else
  return false;
#endif
}

// The WindowChunks of every kernel column j of an axis table along w: chunks
// [begin[j], begin[j + 1]). With `slopes`, for the backward: a neighbour is used where it lies
// in the image (it has a weight or a slope), and the chunks carry the slopes; else where it
// has a weight.
struct WindowChunks {
  std::vector<WindowChunk> chunks;
  std::vector<int64_t> begin;

  WindowChunks() = default;

  template <typename T>
  WindowChunks(const AxisTable<T>& w, int64_t kernel_w, int64_t out_w, int64_t width,
               bool slopes) {
    const auto used = [&](int64_t k, bool low) {
      return slopes ? is_used(w, k, low)
                    : (low ? w.weight_low[k] != T(0) : w.weight_high[k] != T(0));
    };
    for (int64_t j = 0; j < kernel_w; ++j) {
      begin.push_back(static_cast<int64_t>(chunks.size()));
      for (int64_t b = 0; b < out_w;) {
        int64_t lowest = width, highest = -1, count = 0;
        for (; count < 16 && b + count < out_w; ++count) {
          const int64_t k = j * out_w + b + count;
          int64_t first = lowest, last = highest;
          if (used(k, true)) {
            first = std::min<int64_t>(first, w.low[k]);
            last = std::max<int64_t>(last, w.low[k]);
          }
          if (used(k, false)) {
            first = std::min<int64_t>(first, w.high[k]);
            last = std::max<int64_t>(last, w.high[k]);
          }
          if (last >= 0 && last - first > 31) break;
          lowest = first;
          highest = last;
        }
        WindowChunk chunk{};
        chunk.base = static_cast<int32_t>(highest < 0 ? 0 : lowest);
        chunk.first = static_cast<int32_t>(b);
        chunk.count = static_cast<int32_t>(count);
        const int64_t in_row = width - chunk.base;  // window values inside the row
        chunk.load_mask_first = static_cast<uint16_t>(
            in_row >= 16 ? 0xFFFFu : (1u << std::max<int64_t>(in_row, 0)) - 1);
        chunk.load_mask_second = static_cast<uint16_t>(
            in_row >= 32 ? 0xFFFFu : (1u << std::clamp<int64_t>(in_row - 16, 0, 16)) - 1);
        for (int64_t lane = 0; lane < count; ++lane) {
          const int64_t k = j * out_w + b + lane;
          chunk.weight_low[lane] = static_cast<float>(w.weight_low[k]);
          chunk.weight_high[lane] = static_cast<float>(w.weight_high[k]);
          chunk.slope_low[lane] = static_cast<float>(w.slope_low[k]);
          chunk.slope_high[lane] = static_cast<float>(w.slope_high[k]);
          if (used(k, true)) {
            chunk.low[lane] = w.low[k] - chunk.base;
            chunk.low_mask |= uint16_t(1u << lane);
          }
          if (used(k, false)) {
            chunk.high[lane] = w.high[k] - chunk.base;
            chunk.high_mask |= uint16_t(1u << lane);
          }
        }
        chunks.push_back(chunk);
        b += count;
      }
    }
    begin.push_back(static_cast<int64_t>(chunks.size()));
  }
};

// out[b] = the interpolation along w of `row` at sample b < count, each neighbour read only
// where it has weight (so no value, however large, is multiplied by 0).
template <typename T>
inline void interpolate_w(const T* row, const int* low, const int* high, const T* weight_low,
                          const T* weight_high, int64_t count, T* out) {
#pragma omp simd
  for (int64_t b = 0; b < count; ++b) {
    const T x_low = weight_low[b] != T(0) ? weight_low[b] * row[low[b]] : T(0);
    const T x_high = weight_high[b] != T(0) ? weight_high[b] * row[high[b]] : T(0);
    out[b] = x_low + x_high;
  }
}

// out[x] = wl * low[x] + wh * high[x] for x < count, a term without weight left out.
template <typename T>
inline void blend_h(const T* low, const T* high, T wl, T wh, int64_t count, T* out) {
  if (wh == T(0)) {
#pragma omp simd
    for (int64_t x = 0; x < count; ++x) out[x] = wl * low[x];
  } else if (wl == T(0)) {
#pragma omp simd
    for (int64_t x = 0; x < count; ++x) out[x] = wh * high[x];
  } else {
#pragma omp simd
    for (int64_t x = 0; x < count; ++x) out[x] = wl * low[x] + wh * high[x];
  }
}

MMLSTRIDE_CLONES_FOR_AVX2 void interpolate_w_float(const float* row, const int* low,
                                                   const int* high, const float* weight_low,
                                                   const float* weight_high, int64_t count,
                                                   float* out) {
  interpolate_w(row, low, high, weight_low, weight_high, count, out);
}

MMLSTRIDE_CLONES_FOR_AVX2 void interpolate_w_double(const double* row, const int* low,
                                                    const int* high, const double* weight_low,
                                                    const double* weight_high, int64_t count,
                                                    double* out) {
  interpolate_w(row, low, high, weight_low, weight_high, count, out);
}

MMLSTRIDE_CLONES_FOR_AVX2 void blend_h_float(const float* low, const float* high, float wl,
                                             float wh, int64_t count, float* out) {
  blend_h(low, high, wl, wh, count, out);
}

MMLSTRIDE_CLONES_FOR_AVX2 void blend_h_double(const double* low, const double* high,
                                              double wl, double wh, int64_t count,
                                              double* out) {
  blend_h(low, high, wl, wh, count, out);
}

inline void interpolate(const float* row, const int* low, const int* high, const float* wl,
                        const float* wh, int64_t count, float* out) {
  interpolate_w_float(row, low, high, wl, wh, count, out);
}

inline void interpolate(const double* row, const int* low, const int* high, const double* wl,
                        const double* wh, int64_t count, double* out) {
  interpolate_w_double(row, low, high, wl, wh, count, out);
}

inline void blend(const float* low, const float* high, float wl, float wh, int64_t count,
                  float* out) {
  blend_h_float(low, high, wl, wh, count, out);
}

inline void blend(const double* low, const double* high, double wl, double wh, int64_t count,
                  double* out) {
  blend_h_double(low, high, wl, wh, count, out);
}

#ifdef MMLSTRIDE_HAS_AVX512_WINDOWS
// `row` interpolated along w at every kernel column's samples, by its chunks: sample 0 of
// kernel column j at out + j * stride.
__attribute__((target("avx512f"))) void interpolate_windows(const float* row,
                                                             const WindowChunk* chunks,
                                                             const int64_t* chunk_begin,
                                                             int64_t kernel_w, float* out,
                                                             int64_t stride) {
  for (int64_t j = 0; j < kernel_w; ++j, out += stride) {
    for (const WindowChunk* chunk = chunks + chunk_begin[j]; chunk != chunks + chunk_begin[j + 1];
         ++chunk) {
      const float* window = row + chunk->base;
      const __m512 first = _mm512_maskz_loadu_ps(chunk->load_mask_first, window);
      const __m512 second = _mm512_maskz_loadu_ps(chunk->load_mask_second, window + 16);
      const __m512 low = _mm512_maskz_permutex2var_ps(chunk->low_mask, first,
                                                      _mm512_load_si512(chunk->low), second);
      const __m512 high = _mm512_maskz_permutex2var_ps(chunk->high_mask, first,
                                                       _mm512_load_si512(chunk->high), second);
      const __m512 value =
          _mm512_fmadd_ps(high, _mm512_load_ps(chunk->weight_high),
                          _mm512_mul_ps(low, _mm512_load_ps(chunk->weight_low)));
      _mm512_mask_storeu_ps(out + chunk->first, static_cast<__mmask16>((1u << chunk->count) - 1),
                            value);
    }
  }
}
#endif

#ifdef MMLSTRIDE_HAS_AVX512_WINDOWS
// interpolate_rows by the backward's chunks of one kernel column, [chunk, end): the same
// values, b times the derivative (when kSlope) and the derivative (when kPhase), 16 samples
// at a time from a 32-value window of each input row by two permutes.
template <bool kSlope, bool kPhase>
__attribute__((target("avx512f"))) void interpolate_rows_windows(
    const float* im, int64_t width, int64_t first, int64_t last, const WindowChunk* chunks,
    const WindowChunk* end, int64_t out_w, float* value, float* slope, float* moment) {
  const __m512 lanes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t r = first; r <= last; ++r) {
    const float* row = im + r * width;
    const int64_t offset = (r - first) * out_w;
    for (const WindowChunk* chunk = chunks; chunk != end; ++chunk) {
      const float* window = row + chunk->base;
      const __m512 window_first = _mm512_maskz_loadu_ps(chunk->load_mask_first, window);
      const __m512 window_second = _mm512_maskz_loadu_ps(chunk->load_mask_second, window + 16);
      const __m512 low = _mm512_maskz_permutex2var_ps(
          chunk->low_mask, window_first, _mm512_load_si512(chunk->low), window_second);
      const __m512 high = _mm512_maskz_permutex2var_ps(
          chunk->high_mask, window_first, _mm512_load_si512(chunk->high), window_second);
      const __mmask16 stored = static_cast<__mmask16>((1u << chunk->count) - 1);
      const int64_t at = offset + chunk->first;
      _mm512_mask_storeu_ps(value + at, stored,
                            _mm512_fmadd_ps(high, _mm512_load_ps(chunk->weight_high),
                                            _mm512_mul_ps(low, _mm512_load_ps(chunk->weight_low))));
      if (kSlope) {
        const __m512 derivative =
            _mm512_fmadd_ps(high, _mm512_load_ps(chunk->slope_high),
                            _mm512_mul_ps(low, _mm512_load_ps(chunk->slope_low)));
        const __m512 index = _mm512_add_ps(lanes, _mm512_set1_ps(float(chunk->first)));
        _mm512_mask_storeu_ps(moment + at, stored, _mm512_mul_ps(index, derivative));
        if (kPhase) _mm512_mask_storeu_ps(slope + at, stored, derivative);
      }
    }
  }
}
#endif

// Channel-major columns (ls_conv_im2col_cpu's layout) sampled straight from the input's
// planes. The bilinear sample is separable (ls_conv_sampling.h): for each channel, output row
// and kernel row, the two input rows it reads are blended along h into a row buffer
// (contiguous, vectorised), which is then interpolated along w at every kernel column's
// samples: 16 at a time by two permutes of a 32-value window (WindowChunk) where
// window_interpolation(), else one at a time (gathers where the compiler vectorises).
template <typename T>
struct PlaneSampler {
  const LSConvGeometry& g;
  AxisTable<T> h, w;
  WindowChunks windows;  // float32, where window_interpolation()

  PlaneSampler(const LSConvGeometry& geometry, const RealStride& stride)
      : g(geometry),
        h(g.kernel_h, g.out_h, stride.h, stride.phase_h, g.pad_h, g.dilation_h, g.height),
        w(g.kernel_w, g.out_w, stride.w, stride.phase_w, g.pad_w, g.dilation_w, g.width) {
    if (std::is_same<T, float>::value && window_interpolation()) {
      windows = WindowChunks(w, g.kernel_w, g.out_w, g.width, /*slopes=*/false);
    }
  }

  // Elements of the row buffer a thread passes to sample().
  int64_t row_size() const { return g.width; }

  // `row` (an input row blended along h) interpolated along w at kernel column j's samples
  // into out + j * stride, for every j.
  void interpolate_row_w(const T* row, T* out, int64_t stride) const {
#ifdef MMLSTRIDE_HAS_AVX512_WINDOWS
    if constexpr (std::is_same<T, float>::value) {
      if (!windows.chunks.empty()) {
        return interpolate_windows(row, windows.chunks.data(), windows.begin.data(), g.kernel_w,
                                   out, stride);
      }
    }
#endif
    for (int64_t j = 0; j < g.kernel_w; ++j) {
      const int64_t wk = j * g.out_w;
      interpolate(row, &w.low[wk], &w.high[wk], &w.weight_low[wk], &w.weight_high[wk],
                  g.out_w, out + j * stride);
    }
  }

  // The columns of channel c, image `image`, output rows [a_begin, a_end), at column
  // `column` of `columns` (rows of ncols values; channel c's first row at `columns`):
  // row (i * kernel_w + j), column column + (a - a_begin) * out_w + b. `row` holds
  // row_size() elements.
  void sample(const T* input, int64_t image, int64_t c, int64_t a_begin, int64_t a_end,
              T* columns, int64_t ncols, int64_t column, T* row) const {
    const T* plane = input + (image * g.channels + c) * g.height * g.width;
    for (int64_t a = a_begin; a < a_end; ++a) {
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        const int64_t hk = i * g.out_h + a;
        const T hl = h.weight_low[hk];
        const T hh = h.weight_high[hk];
        T* out = columns + i * g.kernel_w * ncols + column + (a - a_begin) * g.out_w;
        if (hl == T(0) && hh == T(0)) {  // the kernel row samples outside the image
          for (int64_t j = 0; j < g.kernel_w; ++j) {
            std::fill(out + j * ncols, out + j * ncols + g.out_w, T(0));
          }
          continue;
        }
        blend(plane + h.low[hk] * g.width, plane + h.high[hk] * g.width, hl, hh, g.width, row);
        interpolate_row_w(row, out, ncols);
      }
    }
  }
};

// The tile's channel-major columns (ls_conv_im2col_cpu), in parallel over channels.
template <typename T>
void im2col_kernel(const T* input, const LSConvGeometry& g, const RealStride& stride,
                   int64_t row_begin, int64_t row_end, T* columns) {
  const PlaneSampler<T> sampler(g, stride);
  const int64_t ncols = (row_end - row_begin) * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(sampler.row_size());
    for (int64_t c = begin; c < end; ++c) {
      for (const ImageRows& part : parts) {
        sampler.sample(input, part.image, c, part.a_begin, part.a_end,
                       columns + c * taps * ncols, ncols, part.column, buffer.data());
      }
    }
  });
}

// A buffer of at least `numel` elements kept by the calling thread from call to call (slot
// 0: the sampler's buffer, 1: the columns, 2: the product), so that the forward's scratch, a few
// MiB per thread, is not mapped and faulted in afresh on every call: on these machines that
// cost the fused forward 10-25% of its time.
template <typename T>
at::Tensor& thread_scratch(int slot, int64_t numel, const at::TensorOptions& options) {
  thread_local std::array<at::Tensor, 3> buffers;
  at::Tensor& buffer = buffers[slot];
  if (!buffer.defined() || buffer.numel() < numel) {
    buffer = at::empty({std::max<int64_t>(numel, 1)}, options);
  }
  return buffer;
}

// The forward's bands of output rows (numbered over the batch, row = image * out_h + a) of
// about kBandPixels pixels: `rows` rows of one image, or, where an image has fewer pixels,
// `images` whole images. They depend on the geometry alone, so every thread count computes
// the same GEMMs.
struct Bands {
  static constexpr int64_t kBandPixels = 1024;
  int64_t out_h, total_rows;
  int64_t rows = 0, per_image = 1;  // bands within an image
  int64_t images = 0;               // or bands of whole images
  int64_t count;

  Bands(const LSConvGeometry& g, int64_t batch) : out_h(g.out_h), total_rows(batch * g.out_h) {
    const int64_t out_w = std::max<int64_t>(g.out_w, 1);
    const int64_t out_plane = g.out_h * out_w;
    if (out_plane >= kBandPixels) {
      rows = std::min(g.out_h, std::max<int64_t>(1, (kBandPixels + out_w / 2) / out_w));
      per_image = (g.out_h + rows - 1) / rows;
      count = batch * per_image;
    } else {
      // At least 8 bands where the batch has 8 images, so that threads get equal shares.
      images = std::clamp<int64_t>((kBandPixels + out_plane / 2) / out_plane, 1,
                                   std::max<int64_t>(1, batch / 8));
      count = (batch + images - 1) / images;
    }
  }

  // The most output rows a band has.
  int64_t max_rows() const { return images > 0 ? images * out_h : rows; }

  // Output rows [begin, end) of band k.
  void range(int64_t k, int64_t& begin, int64_t& end) const {
    if (images > 0) {
      begin = k * images * out_h;
      end = std::min(total_rows, begin + images * out_h);
    } else {
      const int64_t image_begin = k / per_image * out_h;
      begin = image_begin + k % per_image * rows;
      end = std::min(image_begin + out_h, begin + rows);
    }
  }
};

// product (O, ncols) = weight_g (groups, O / groups, K) times columns_g (groups, K, ncols)
// per group, plus the bias; float32 by oneDNN's micro-kernel where it runs (25% faster than
// MKL's GEMM on det-200 and r50-s2, which also packs the columns again), else ATen's GEMM.
template <typename T>
void band_products(const at::Tensor& weight_g, const optional<at::Tensor>& bias,
                   const at::Tensor& columns_g, at::Tensor& product) {
  const int64_t groups = weight_g.size(0);
  const int64_t group_out = weight_g.size(1);
  if constexpr (std::is_same<T, float>::value) {
    if (micro_kernel_products()) {
      const int64_t ldc = product.stride(0);
      for (int64_t group = 0; group < groups; ++group) {
        micro_kernel_product(
            group_out, columns_g.size(2), weight_g.size(2),
            weight_g.select(0, group).const_data_ptr<float>(),
            columns_g.select(0, group).const_data_ptr<float>(), columns_g.stride(1),
            bias ? bias->const_data_ptr<float>() + group * group_out : nullptr,
            product.mutable_data_ptr<float>() + group * group_out * ldc, ldc);
      }
      return;
    }
  }
  for (int64_t group = 0; group < groups; ++group) {
    at::Tensor target = product.narrow(0, group * group_out, group_out);
    if (bias) {
      at::addmm_out(target, bias->narrow(0, group * group_out, group_out).unsqueeze(1),
                    weight_g.select(0, group), columns_g.select(0, group));
    } else {
      at::mm_out(target, weight_g.select(0, group), columns_g.select(0, group));
    }
  }
}

// The forward (ls_conv_forward_bands_cpu). Each work item is a band (Bands): its thread
// samples the band's channel-major columns into a buffer that stays in the core's cache, then
// multiplies the weight by them (one GEMM per group, with the bias) straight into the output's
// rows, or for a band of several images into a product copied to each image. No thread waits
// for another.
template <typename T>
void forward_bands_kernel(const at::Tensor& input, const at::Tensor& weight,
                          const optional<at::Tensor>& bias, const LSConvGeometry& g,
                          const RealStride& stride, int64_t groups, at::Tensor& output) {
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight.size(0);
  const int64_t group_out = out_channels / groups;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t col_rows = g.channels * taps;
  const int64_t group_rows = col_rows / groups;
  const int64_t out_plane = g.out_h * g.out_w;
  const Bands bands(g, batch);
  const int64_t band_cols = bands.max_rows() * g.out_w;
  const PlaneSampler<T> sampler(g, stride);
  const T* in = input.const_data_ptr<T>();
  const at::Tensor weight_g = weight.view({groups, group_out, group_rows});
  const at::Tensor output_planes = output.view({batch, out_channels, out_plane});
  at::parallel_for(0, bands.count, 1, [&](int64_t band_begin, int64_t band_end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // in every thread of the call
    T* buffer = thread_scratch<T>(0, sampler.row_size(), input.options())
                    .template mutable_data_ptr<T>();
    const at::Tensor& columns_buffer = thread_scratch<T>(1, col_rows * band_cols, input.options());
    for (int64_t band = band_begin; band < band_end; ++band) {
      int64_t row_begin, row_end;
      bands.range(band, row_begin, row_end);
      const int64_t ncols = (row_end - row_begin) * g.out_w;
      const std::vector<ImageRows> parts = split_by_image(g, row_begin, row_end);
      T* columns = columns_buffer.template mutable_data_ptr<T>();
      for (int64_t c = 0; c < g.channels; ++c) {
        for (const ImageRows& part : parts) {
          sampler.sample(in, part.image, c, part.a_begin, part.a_end, columns + c * taps * ncols,
                         ncols, part.column, buffer);
        }
      }
      const at::Tensor columns_g =
          columns_buffer.narrow(0, 0, col_rows * ncols).view({groups, group_rows, ncols});
      const bool in_place = parts.size() == 1;
      at::Tensor product;
      if (in_place) {
        product = output_planes.select(0, parts[0].image)
                      .narrow(1, parts[0].a_begin * g.out_w, ncols);
      } else {
        product = thread_scratch<T>(2, out_channels * band_cols, input.options())
                      .narrow(0, 0, out_channels * ncols)
                      .view({out_channels, ncols});
      }
      band_products<T>(weight_g, bias, columns_g, product);
      if (!in_place) {
        for (const ImageRows& part : parts) {
          output_planes.select(0, part.image)
              .narrow(1, part.a_begin * g.out_w, (part.a_end - part.a_begin) * g.out_w)
              .copy_(product.narrow(1, part.column, (part.a_end - part.a_begin) * g.out_w));
        }
      }
    }
  });
}

// interpolate_rows at kernel column j: by the backward's windows where given (float32),
// else one sample at a time.
template <typename T, bool kSlope, bool kPhase>
void gather_rows(const T* im, const LSConvGeometry& g, int64_t first, int64_t last,
                 const AxisTable<T>& w, int64_t j, const WindowChunks* windows, T* value,
                 T* slope, T* moment) {
#ifdef MMLSTRIDE_HAS_AVX512_WINDOWS
  if constexpr (std::is_same<T, float>::value) {
    if (windows != nullptr) {
      const WindowChunk* chunks = windows->chunks.data();
      return interpolate_rows_windows<kSlope, kPhase>(
          im, g.width, first, last, chunks + windows->begin[j], chunks + windows->begin[j + 1],
          g.out_w, value, slope, moment);
    }
  }
#endif
  interpolate_rows<T, kSlope, kPhase>(im, g, first, last, w, j * g.out_w, value, slope, moment);
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
                    double* partial, T* columns, const WindowChunks* windows,
                    std::vector<T>& grad_w, std::vector<T>& value_w, std::vector<T>& slope_w,
                    std::vector<T>& moment_w) {
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
      gather_rows<T, kStride, kPhase>(im, g, first, last, w, j, windows, value_w.data(),
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
  // The gather along w by windows, as the forward's (float32, where window_interpolation()).
  const WindowChunks windows = std::is_same<T, float>::value && window_interpolation()
                                   ? WindowChunks(w, g.kernel_w, g.out_w, g.width, /*slopes=*/true)
                                   : WindowChunks();
  const WindowChunks* windows_or_null = windows.chunks.empty() ? nullptr : &windows;
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
                                               first, last, grad_im, partial, columns,         \
                                               windows_or_null, grad_w, value_w, slope_w,      \
                                               moment_w)
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
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_im2col_cpu", [&] {
    im2col_kernel<scalar_t>(input.const_data_ptr<scalar_t>(), geometry, stride.values,
                            row_begin, row_end, columns.mutable_data_ptr<scalar_t>());
  });
}

void ls_conv_forward_bands_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                               const PreparedStride& stride, int64_t groups,
                               at::Tensor& output) {
  RECORD_FUNCTION("mmlstride::forward_bands", std::vector<c10::IValue>());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_forward_bands_cpu", [&] {
    forward_bands_kernel<scalar_t>(input, weight, bias, geometry, stride.values, groups,
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

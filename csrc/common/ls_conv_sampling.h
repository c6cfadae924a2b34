// Geometry and bilinear sampling math of the learnable-stride convolution,
// shared by the CPU and CUDA backends. Plain C++ (no torch header), usable
// on host and device.
//
// Output pixel (a, b) of an LSConv samples the input at
//     h = a * stride_h + phase_h - pad_h + i * dilation_h,
//     w = b * stride_w + phase_w - pad_w + j * dilation_w
// for kernel tap (i, j), where the phase (a translation of the grid) is 0 unless given,
// by bilinear interpolation with MMCV's deform-conv boundary rule
// (deformable_im2col_bilinear / get_coordinate_weight): the sample is 0 when h <= -1,
// h >= height, w <= -1 or w >= width; otherwise the four neighbours that lie inside the
// image contribute, outside ones count 0.
//
// That rule is separable: a sample is the product of an interpolation along
// h and one along w, so each axis is described once per (output index, tap)
// by an AxisSample, and the 2-D value and its derivatives are small sums.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSCONV_HOST_DEVICE __host__ __device__
#else
#define LSCONV_HOST_DEVICE
#endif

namespace mmlstride {

// Shapes, padding and dilation of one LSConv call. The stride is a tensor, read where
// each backend reads it (CPU: its values, RealStride; CUDA: tables made on the device).
struct LSConvGeometry {
  int64_t channels;
  int64_t height, width;
  int64_t kernel_h, kernel_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
  int64_t out_h, out_w;
};

// The values of the stride and of the phase (0 when the call has none), on the host.
struct RealStride {
  double h, w;
  double phase_h = 0.0, phase_w = 0.0;
};

// Interpolation along one axis at a real position: the two neighbours, their
// weights, and the derivatives of those weights with respect to the position.
// A neighbour outside the image (or every neighbour, when the position lies
// outside (-1, size)) gets weight and slope 0 and a clamped, loadable index.
template <typename T>
struct AxisSample {
  int low;         // index of the lower neighbour, floor(position)
  int high;        // index of the upper neighbour, floor(position) + 1
  T weight_low;    // 1 - frac
  T weight_high;   // frac
  T slope_low;     // d weight_low / d position  = -1
  T slope_high;    // d weight_high / d position = +1
};

template <typename T, typename P>
LSCONV_HOST_DEVICE inline AxisSample<T> axis_sample(P position, int64_t size) {
  AxisSample<T> s = {0, 0, T(0), T(0), T(0), T(0)};
  // Written so that NaN positions also take this branch.
  if (!(position > P(-1) && position < P(size))) return s;
  int low = static_cast<int>(position);  // truncation; fix up to floor below 0
  if (P(low) > position) --low;
  const P frac = position - P(low);
  if (low >= 0) {
    s.low = low;
    s.weight_low = T(P(1) - frac);
    s.slope_low = T(-1);
  }
  if (low + 1 <= size - 1) {
    s.high = low + 1;
    s.weight_high = T(frac);
    s.slope_high = T(1);
  }
  return s;
}

// Position sampled by output index `out` and kernel tap `tap` along one axis. A phase of 0
// gives the position without one bit for bit.
LSCONV_HOST_DEVICE inline double sample_position(int64_t out, int64_t tap, double stride,
                                                 double phase, int64_t pad, int64_t dilation) {
  return double(out) * stride + phase - double(pad) + double(tap * dilation);
}

// Conversion of a stored element of type V to type T (a static_cast).
// ls_conv_cuda_kernel.cuh specialises it for CUDA's half and bfloat16 types,
// whose conversions torch builds disable as implicit casts.
template <typename T, typename V>
struct Convert {
  LSCONV_HOST_DEVICE static T apply(V v) { return static_cast<T>(v); }
};

template <typename T, typename V>
LSCONV_HOST_DEVICE inline T convert(V v) {
  return Convert<T, V>::apply(v);
}

// Sum over the four neighbours of (factor along h) * (factor along w) * pixel,
// with the factors of the low and high neighbour given per axis. Pixels of type
// V are read as T (e.g. half pixels, float arithmetic).
template <typename T, typename V>
LSCONV_HOST_DEVICE inline T combine_neighbours(const V* im, int64_t width, const AxisSample<T>& h,
                                               T h_low, T h_high, const AxisSample<T>& w,
                                               T w_low, T w_high) {
  const V* row_low = im + h.low * width;
  const V* row_high = im + h.high * width;
  return h_low * (w_low * convert<T>(row_low[w.low]) + w_high * convert<T>(row_low[w.high])) +
         h_high * (w_low * convert<T>(row_high[w.low]) + w_high * convert<T>(row_high[w.high]));
}

// Interpolated value of image `im` (row length `width`) at (h, w).
template <typename T, typename V>
LSCONV_HOST_DEVICE inline T bilinear_value(const V* im, int64_t width, const AxisSample<T>& h,
                                           const AxisSample<T>& w) {
  return combine_neighbours(im, width, h, h.weight_low, h.weight_high, w, w.weight_low,
                            w.weight_high);
}

// d value / d h at (h, w): MMCV's get_coordinate_weight with bp_dir = 0.
template <typename T, typename V>
LSCONV_HOST_DEVICE inline T coordinate_weight_h(const V* im, int64_t width, const AxisSample<T>& h,
                                                const AxisSample<T>& w) {
  return combine_neighbours(im, width, h, h.slope_low, h.slope_high, w, w.weight_low,
                            w.weight_high);
}

// d value / d w at (h, w): MMCV's get_coordinate_weight with bp_dir = 1.
template <typename T, typename V>
LSCONV_HOST_DEVICE inline T coordinate_weight_w(const V* im, int64_t width, const AxisSample<T>& h,
                                                const AxisSample<T>& w) {
  return combine_neighbours(im, width, h, h.weight_low, h.weight_high, w, w.slope_low,
                            w.slope_high);
}

}  // namespace mmlstride

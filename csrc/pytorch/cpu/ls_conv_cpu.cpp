// CPU kernels of the learnable-stride convolution: bilinear im2col, and the
// col2im scatter fused with the stride-gradient reduction.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "../ls_conv_kernels.h"

namespace mmlstride {
namespace {

// AxisSample of every (tap, output index) pair along one axis, tap-major.
template <typename T>
std::vector<AxisSample<T>> axis_table(int64_t taps, int64_t outs, double stride, int64_t pad,
                                      int64_t dilation, int64_t size) {
  std::vector<AxisSample<T>> table(taps * outs);
  for (int64_t tap = 0; tap < taps; ++tap) {
    for (int64_t out = 0; out < outs; ++out) {
      table[tap * outs + out] =
          axis_sample<T>(sample_position(out, tap, stride, pad, dilation), size);
    }
  }
  return table;
}

template <typename T>
void im2col_kernel(const T* input, const LSConvGeometry& g, int64_t images, T* columns) {
  const auto h_table = axis_table<T>(g.kernel_h, g.out_h, g.stride_h, g.pad_h, g.dilation_h, g.height);
  const auto w_table = axis_table<T>(g.kernel_w, g.out_w, g.stride_w, g.pad_w, g.dilation_w, g.width);
  const int64_t plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  // One work item: one (channel, tap) row of the columns for one image.
  at::parallel_for(0, g.channels * taps * images, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / images;
      const int64_t image = item % images;
      const int64_t c = row / taps;
      const int64_t i = (row % taps) / g.kernel_w;
      const int64_t j = row % g.kernel_w;
      const T* im = input + (image * g.channels + c) * plane;
      T* out = columns + item * out_plane;
      const AxisSample<T>* w_row = w_table.data() + j * g.out_w;
      for (int64_t a = 0; a < g.out_h; ++a) {
        const AxisSample<T>& hs = h_table[i * g.out_h + a];
        for (int64_t b = 0; b < g.out_w; ++b) {
          out[a * g.out_w + b] = bilinear_value(im, g.width, hs, w_row[b]);
        }
      }
    }
  });
}

template <typename T>
void col2im_coord_kernel(const T* grad_columns, const T* input, const LSConvGeometry& g,
                         int64_t images, T* grad_input, double* stride_partials) {
  const auto h_table = axis_table<T>(g.kernel_h, g.out_h, g.stride_h, g.pad_h, g.dilation_h, g.height);
  const auto w_table = axis_table<T>(g.kernel_w, g.out_w, g.stride_w, g.pad_w, g.dilation_w, g.width);
  const int64_t plane = g.height * g.width;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  // One work item: one input plane (image, channel); it owns its grad_input
  // plane and its stride partial, so there are no write conflicts.
  at::parallel_for(0, images * g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t image = item / g.channels;
      const int64_t c = item % g.channels;
      const T* im = input + item * plane;
      T* grad_im = grad_input ? grad_input + item * plane : nullptr;
      if (grad_im) std::memset(grad_im, 0, sizeof(T) * plane);
      double sum_h = 0.0;
      double sum_w = 0.0;
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t row = (c * g.kernel_h + i) * g.kernel_w + j;
          const T* grad_col = grad_columns + (row * images + image) * out_plane;
          const AxisSample<T>* w_row = w_table.data() + j * g.out_w;
          for (int64_t a = 0; a < g.out_h; ++a) {
            const AxisSample<T>& hs = h_table[i * g.out_h + a];
            T row_h = T(0);
            T row_w = T(0);
            for (int64_t b = 0; b < g.out_w; ++b) {
              const T grad = grad_col[a * g.out_w + b];
              const AxisSample<T>& ws = w_row[b];
              if (grad_im) {
                T* low = grad_im + hs.low * g.width;
                T* high = grad_im + hs.high * g.width;
                low[ws.low] += grad * hs.weight_low * ws.weight_low;
                low[ws.high] += grad * hs.weight_low * ws.weight_high;
                high[ws.low] += grad * hs.weight_high * ws.weight_low;
                high[ws.high] += grad * hs.weight_high * ws.weight_high;
              }
              if (stride_partials) {
                // The sample position moves by a per unit of s_h, by b per unit of s_w.
                row_h += grad * coordinate_weight_h(im, g.width, hs, ws);
                row_w += grad * T(b) * coordinate_weight_w(im, g.width, hs, ws);
              }
            }
            sum_h += double(a) * double(row_h);
            sum_w += double(row_w);
          }
        }
      }
      if (stride_partials) {
        stride_partials[2 * item] = sum_h;
        stride_partials[2 * item + 1] = sum_w;
      }
    }
  });
}

}  // namespace

void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_im2col_cpu", [&] {
    im2col_kernel<scalar_t>(input.const_data_ptr<scalar_t>(), geometry, input.size(0),
                            columns.mutable_data_ptr<scalar_t>());
  });
}

void ls_conv_col2im_coord_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                              const LSConvGeometry& geometry, const at::Tensor& grad_input,
                              const at::Tensor& stride_partials) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "ls_conv_col2im_coord_cpu", [&] {
    col2im_coord_kernel<scalar_t>(
        grad_columns.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), geometry,
        input.size(0), grad_input.defined() ? grad_input.mutable_data_ptr<scalar_t>() : nullptr,
        stride_partials.defined() ? stride_partials.mutable_data_ptr<double>() : nullptr);
  });
}

}  // namespace mmlstride

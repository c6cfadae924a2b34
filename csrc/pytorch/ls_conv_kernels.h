// Backend kernels of the learnable-stride convolution. The host code in
// ls_conv.cpp does the argument checks, batch chunking and GEMMs, and calls
// these for the sampling work.
//
// Layouts, for a chunk of `n` images (input chunk: n x C x H x W, contiguous):
//   columns, grad_columns: (C * kernel_h * kernel_w) x (n * out_h * out_w),
//     row (c * kernel_h + i) * kernel_w + j, column (image * out_h + a) * out_w + b.
//   stride_partials: n x C x 2 float64, entry (image, c) = that plane's
//     contribution to (dL/ds_h, dL/ds_w); the caller sums them.
#pragma once

#include <ATen/ATen.h>

#include "../common/ls_conv_sampling.h"

namespace mmlstride {

// columns <- bilinear samples of `input` at every (tap, output pixel).
void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const at::Tensor& columns);

// From the gradient of the columns: grad_input (the scatter of grad_columns
// back onto the input, when defined) and stride_partials (when defined).
void ls_conv_col2im_coord_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                              const LSConvGeometry& geometry, const at::Tensor& grad_input,
                              const at::Tensor& stride_partials);

}  // namespace mmlstride

// Backend kernels of the learnable-stride convolution. The host code in
// ls_conv.cpp does the argument checks, the tiling and the GEMMs, and calls
// these for the sampling work.
//
// The batch's output rows are numbered globally, row = image * out_h + a, and
// processed in tiles [row_begin, row_end) of whole output rows (a tile may span
// several images, or part of one). Layouts (input: N x C x H x W, contiguous):
//   columns, grad_columns: (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w),
//     row (c * kernel_h + i) * kernel_w + j, column (row - row_begin) * out_w + b.
//   stride_partials: N x C x 2 float64, entry (image, c) = that plane's
//     contribution to (dL/ds_h, dL/ds_w), accumulated over tiles; the caller sums them.
#pragma once

#include <ATen/ATen.h>

#include "../common/ls_conv_sampling.h"

namespace mmlstride {

// columns <- bilinear samples of `input` at every (tap, output pixel) of the tile.
void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        int64_t row_begin, int64_t row_end, const at::Tensor& columns);

// From the gradient of the tile's columns: adds their scatter onto the input to
// grad_input and their stride-gradient contributions to stride_partials, and
// writes the tile's columns (as ls_conv_im2col_cpu) to `columns`, each only when
// defined; grad_input or stride_partials must be.
void ls_conv_backward_sampling_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                   const LSConvGeometry& geometry, int64_t row_begin,
                                   int64_t row_end, const at::Tensor& grad_input,
                                   const at::Tensor& stride_partials, const at::Tensor& columns);

}  // namespace mmlstride

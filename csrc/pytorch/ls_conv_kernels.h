// Backend kernels of the learnable-stride convolution. The host code in
// ls_conv.cpp does the argument checks, the tiling and the GEMMs, and calls
// these for the sampling work.
//
// The batch's output rows are numbered globally, row = image * out_h + a, and
// processed in tiles [row_begin, row_end) of whole output rows (a tile may span
// several images, or part of one). Layouts (input: N x C x H x W, contiguous):
//   columns, grad_columns: (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w),
//     row (c * kernel_h + i) * kernel_w + j, column (row - row_begin) * out_w + b;
//     columns in the dtype of input, grad_columns in the accumulation dtype (that of
//     input, float32 for float16 and bfloat16 input).
//   grad_input: N x C x H x W in the accumulation dtype; the kernels add to it.
//   stride_partials: float64 partial sums of (dL/ds_h, dL/ds_w), accumulated over
//     tiles; the caller sums them. N x C x 2 on CPU (one pair per image plane,
//     reduced in parallel without atomics), 1 x 2 on CUDA (each tile's per-block
//     partials are summed into it in a fixed order).
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

#ifdef WITH_CUDA
// The CUDA counterparts of the two kernels above, on the current stream.
void ls_conv_im2col_cuda(const at::Tensor& input, const LSConvGeometry& geometry,
                         int64_t row_begin, int64_t row_end, const at::Tensor& columns);

void ls_conv_backward_sampling_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                    const LSConvGeometry& geometry, int64_t row_begin,
                                    int64_t row_end, const at::Tensor& grad_input,
                                    const at::Tensor& stride_partials, const at::Tensor& columns);
#endif

}  // namespace mmlstride

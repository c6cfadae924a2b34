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
#pragma once

#include <ATen/ATen.h>

#include "../common/ls_conv_sampling.h"
#include "torch_compat.h"

namespace mmlstride {

// The stride and phase as the sampling kernels of one call read them, prepared once per call.
struct PreparedStride {
  // CPU: the values, read from the tensors on the host.
  RealStride values{0.0, 0.0};
  // CUDA: the sampling tables made from the stride on the device, with the stride
  // gradient's scratch (csrc/common/cuda/ls_conv_cuda_launch.cuh): nothing is copied to
  // the host, and an invalid stride stops the tables kernel with a device-side assertion.
  at::Tensor tables;
  // When the stride gradient is wanted: float64 (parts, 4) partial sums of
  // (dL/ds_h, dL/ds_w, dL/dt_h, dL/dt_w), the stride's and the phase's gradients (one
  // reduction: the phase's lacks the output index factor), zero at first and accumulated
  // over tiles; the caller sums the parts. CPU: one row per image plane (N * C, reduced in
  // parallel without atomics); CUDA: one row inside `tables` (each tile's blocks are summed
  // into it in a fixed order).
  at::Tensor partials;
  // Whether the phase's gradient is wanted (set by the caller): without it the backward
  // skips the phase's sums and leaves their partials 0, so that a call without a learned
  // phase does the stride's work alone.
  bool phase_gradient = false;
};

// Checks and reads the stride (finite values > 0, else a ValueError) and the phase when
// defined (finite values); partials for a batch of `batch` images when `stride_gradient`
// (the stride's or the phase's gradient is wanted).
PreparedStride ls_conv_prepare_cpu(const at::Tensor& stride, const at::Tensor& phase,
                                   const LSConvGeometry& geometry, int64_t batch,
                                   bool stride_gradient);

// columns <- bilinear samples of `input` at every (tap, output pixel) of the tile: a
// (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w) matrix, row
// (c * kernel_h + i) * kernel_w + j, column (row - row_begin) * out_w + b.
void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                        const at::Tensor& columns);

// The CPU forward of the batch into `output` (N, O, out_h, out_w), contiguous, by bands of
// output rows of one image: per band, its channel-major columns (as ls_conv_im2col_cpu),
// sampled straight from the input's planes into a buffer of the thread's, times the weight
// (O, C / groups, kernel_h, kernel_w), contiguous, per group, written in place with the bias.
void ls_conv_forward_bands_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                               const PreparedStride& stride, int64_t groups,
                               at::Tensor& output);

// From the gradient of the tile's columns: adds their scatter onto the input to
// grad_input and, when `stride_gradient`, their stride- and phase-gradient contributions to
// stride.partials, and writes the tile's columns (as ls_conv_im2col_cpu) to `columns`,
// each only when defined; grad_input must be, or stride_gradient true.
void ls_conv_backward_sampling_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                   const LSConvGeometry& geometry, const PreparedStride& stride,
                                   int64_t row_begin, int64_t row_end,
                                   const at::Tensor& grad_input, bool stride_gradient,
                                   const at::Tensor& columns);

// Whether the CPU's float32 products of the forward and of the weight gradient go through
// oneDNN's matmul (a float32 CPU tensor `like`, a torch with oneDNN, torch.backends.mkldnn
// enabled).
bool ls_conv_onednn_matmul_cpu(const at::Tensor& like);

// a @ b^T, plus bias (N) on every row when given, through oneDNN's matmul (only where
// ls_conv_onednn_matmul_cpu): a (M, K) and b (N, K), any strides; a new (M, N) tensor.
at::Tensor ls_conv_onednn_linear_cpu(const at::Tensor& a, const at::Tensor& b,
                                     const optional<at::Tensor>& bias);

#ifdef WITH_CUDA
// The CUDA counterparts of the three functions above, on the current stream, with no
// host synchronisation (the stride is read on the device).
PreparedStride ls_conv_prepare_cuda(const at::Tensor& stride, const at::Tensor& phase,
                                    const at::Tensor& input, const LSConvGeometry& geometry,
                                    bool stride_gradient);

void ls_conv_im2col_cuda(const at::Tensor& input, const LSConvGeometry& geometry,
                         const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                         const at::Tensor& columns);

void ls_conv_backward_sampling_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                    const LSConvGeometry& geometry, const PreparedStride& stride,
                                    int64_t row_begin, int64_t row_end,
                                    const at::Tensor& grad_input, bool stride_gradient,
                                    const at::Tensor& columns);

// Whether the fused sampling GEMMs take a call of this input (dtype, device) and geometry:
// float16; bfloat16 on devices of compute capability 8.0 and newer (its tensor-core
// products); float64. Not float32 (see ls_conv.cpp), nor an input without pixels.
bool ls_conv_fused_cuda(const at::Tensor& input, const LSConvGeometry& geometry);

// The forward of the batch into `output` (N, O, out_h, out_w), contiguous, by the fused
// sampling GEMM: weight (O, C / groups, kernel_h, kernel_w) and bias contiguous.
void ls_conv_forward_fused_cuda(const at::Tensor& input, const at::Tensor& weight,
                                const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                                const PreparedStride& stride, int64_t groups,
                                at::Tensor& output);

// The weight gradient (O, C / groups, kernel_h, kernel_w) in the accumulation dtype by the
// fused sampling GEMM, from grad_output (N, O, out_h, out_w), contiguous.
at::Tensor ls_conv_weight_gradient_fused_cuda(const at::Tensor& grad_output,
                                              const at::Tensor& input,
                                              const LSConvGeometry& geometry,
                                              const PreparedStride& stride, int64_t groups,
                                              int64_t out_channels);
#endif

}  // namespace mmlstride

// The CPU kernels of the learnable-stride convolution (ls_conv_cpu.cpp) and its oneDNN
// tile products (ls_conv_cpu_products.cpp), which the CPU backend (ls_conv_cpu_ops.cpp)
// gives the driver. Layouts as in ../ls_conv_backend.h.
#pragma once

#include <ATen/ATen.h>

#include <memory>

#include "../ls_conv_backend.h"

namespace mmlstride {

// Checks and reads the stride (finite values > 0, else a ValueError) and the phase when
// defined (finite values); partials for a batch of `batch` images when `stride_gradient`
// (the stride's or the phase's gradient is wanted).
PreparedStride ls_conv_prepare_cpu(const at::Tensor& stride, const at::Tensor& phase,
                                   const LSConvGeometry& geometry, int64_t batch,
                                   bool stride_gradient);

// LSConvBackend::im2col on the CPU.
void ls_conv_im2col_cpu(const at::Tensor& input, const LSConvGeometry& geometry,
                        const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                        const at::Tensor& columns);

// The CPU forward of the batch into `output` (N, O, out_h, out_w), contiguous, by bands of
// output rows of one image: per band, its channel-major columns (as ls_conv_im2col_cpu),
// sampled straight from the input's planes into a buffer of the thread's, times the weight
// (O, C / groups, kernel_h, kernel_w), contiguous, per group, written in place with the bias
// (float32: by micro_kernel_product where micro_kernel_products()).
void ls_conv_forward_bands_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                               const PreparedStride& stride, int64_t groups,
                               at::Tensor& output);

// LSConvBackend::backward_sampling on the CPU.
void ls_conv_backward_sampling_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                                   const LSConvGeometry& geometry, const PreparedStride& stride,
                                   int64_t row_begin, int64_t row_end,
                                   const at::Tensor& grad_input, bool stride_gradient,
                                   const at::Tensor& columns);

// Whether micro_kernel_product runs here: a torch with oneDNN's float32 batch-reduce GEMM
// micro-kernel (cpublas::brgemm, torch 2.6 and later), on x86-64 with AVX2 and FMA, with
// torch.backends.mkldnn enabled.
bool micro_kernel_products();

// out (m x n, rows ldc apart) = a (m x k, contiguous) times b (k x n, rows ldb apart) plus
// bias (m values, or nullptr), by oneDNN's micro-kernel in blocks that stay in the core's cache,
// where micro_kernel_products().
void micro_kernel_product(int64_t m, int64_t n, int64_t k, const float* a, const float* b,
                          int64_t ldb, const float* bias, float* out, int64_t ldc);

// The tile products through oneDNN for a float32 CPU `input`, where this torch has its matmul
// and torch.backends.mkldnn is enabled, else nullptr: the forward's by its matmul; where the
// weight is no larger than the input, the columns gradient's by its micro-kernel (where
// micro_kernel_products()) and, with `weight_gradient`, the weight gradient's by its matmul;
// the others ATen's batched ones.
std::unique_ptr<TileProducts> onednn_products(const at::Tensor& input, const at::Tensor& weight,
                                              const optional<at::Tensor>& bias, int64_t groups,
                                              bool weight_gradient);

}  // namespace mmlstride

// The CPU backend of the learnable-stride convolution and its registration: the forward by
// bands (sampling fused with each band's product) where the weight is no larger than the
// input, else by tiles; oneDNN's products for float32, ATen's otherwise.
//
// MMLSTRIDE_GEMM_AS_CONVOLUTION=1 in the environment makes the CPU's float32 products 1x1
// convolutions, as CUDA's are, and the forward take the tiles: the CUDA backend's host path,
// run where there is no GPU (docs/op.md).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "ls_conv_cpu.h"

namespace mmlstride {
namespace {

bool gemm_as_convolution(const at::Tensor& input) {
  static const bool forced = [] {
    const char* value = std::getenv("MMLSTRIDE_GEMM_AS_CONVOLUTION");
    return value != nullptr && std::string(value) == "1";
  }();
  return forced && input.scalar_type() == at::kFloat;
}

class CpuBackend final : public LSConvBackend {
 public:
  void check_dtype(const at::Tensor& input) const override {
    const at::ScalarType dtype = input.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "input.dtype=", dtype,
                     " expected float32 or float64 on ", input.device().type(),
                     " (float16 and bfloat16 run on CUDA)");
  }

  // The GEMMs run fastest at a few hundred to a few thousand columns, and a buffer this size
  // is reused from the heap rather than page-faulted anew.
  int64_t tile_bytes() const override { return int64_t(4) << 20; }

  PreparedStride prepare(const at::Tensor& stride, const at::Tensor& phase,
                         const at::Tensor& input, const LSConvGeometry& geometry,
                         bool stride_gradient) const override {
    return ls_conv_prepare_cpu(stride, phase, geometry, input.size(0), stride_gradient);
  }

  void im2col(const at::Tensor& input, const LSConvGeometry& geometry,
              const PreparedStride& stride, int64_t row_begin, int64_t row_end,
              const at::Tensor& columns) const override {
    ls_conv_im2col_cpu(input, geometry, stride, row_begin, row_end, columns);
  }

  void backward_sampling(const at::Tensor& grad_columns, const at::Tensor& input,
                         const LSConvGeometry& geometry, const PreparedStride& stride,
                         int64_t row_begin, int64_t row_end, const at::Tensor& grad_input,
                         bool stride_gradient, const at::Tensor& columns) const override {
    ls_conv_backward_sampling_cpu(grad_columns, input, geometry, stride, row_begin, row_end,
                                  grad_input, stride_gradient, columns);
  }

  // The weight gradient's products through oneDNN (4-15% off the backward of r50-s2 and
  // r50-s3, level on det-200) where the weight is no larger than the input
  // (onednn_products).
  std::unique_ptr<TileProducts> products(const at::Tensor& input, const at::Tensor& weight,
                                         const optional<at::Tensor>& bias, int64_t groups,
                                         bool weight_gradient) const override {
    if (gemm_as_convolution(input)) return convolution_products(weight, bias, groups);
    auto onednn = onednn_products(input, weight, bias, groups, weight_gradient);
    return onednn ? std::move(onednn) : batched_products(weight, bias, groups);
  }

  // By bands where the weight is no larger than the input. A larger one (8 x 512 ch @ 14)
  // runs faster through the channel-major tiles' one multi-threaded GEMM than through each
  // band's single-threaded one.
  bool forward_whole(const at::Tensor& input, const at::Tensor& weight,
                     const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                     const PreparedStride& stride, int64_t groups,
                     at::Tensor& output) const override {
    if (gemm_as_convolution(input) || weight.numel() > input.numel()) return false;
    ls_conv_forward_bands_cpu(input, weight, bias, geometry, stride, groups, output);
    return true;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(mmlstride, CPU, m) {
  m.impl("ls_conv2d", &ls_conv2d_kernel<CpuBackend>);
  m.impl("ls_conv2d_backward", &ls_conv2d_backward_kernel<CpuBackend>);
}

}  // namespace mmlstride

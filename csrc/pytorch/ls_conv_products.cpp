// The tile products every backend may use: ATen's batched matrix products, and 1x1
// convolutions (see ls_conv_backend.h).
#include <ATen/ATen.h>

#include "ls_conv_backend.h"

namespace mmlstride {

at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

namespace {

// out (float32) <- a @ b for float16 or bfloat16 batches a and b, without
// rounding the product to their dtype (cuBLAS accumulates in float32 anyway).
void bmm_float32_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#if MMLSTRIDE_TORCH_AT_LEAST(2, 8)
  at::bmm_out(out, a, b, at::kFloat);  // the out_dtype overload (torch 2.8)
#else
  at::bmm_out(out, a.to(at::kFloat), b.to(at::kFloat));
#endif
}

// (K, cols) as (groups, K / groups, cols).
at::Tensor by_group(const at::Tensor& matrix, int64_t groups) {
  return matrix.view({groups, matrix.size(0) / groups, matrix.size(1)});
}

class BatchedProducts final : public TileProducts {
 public:
  BatchedProducts(const at::Tensor& weight, const optional<at::Tensor>& bias, int64_t groups)
      : weight_(weight.view({groups, weight.size(0) / groups, weight.numel() / weight.size(0)})),
        bias_(bias ? bias->view({groups, weight.size(0) / groups, 1}) : at::Tensor()),
        sizes_(weight.sizes().vec()),
        groups_(groups),
        low_precision_(accumulate_type(weight.scalar_type()) != weight.scalar_type()) {}

  bool in_place() const override { return true; }

  at::Tensor forward(const at::Tensor& columns, const at::Tensor& target) override {
    at::Tensor out = target;
    if (bias_.defined()) {
      at::baddbmm_out(out, bias_.expand_as(target), weight_, by_group(columns, groups_));
    } else {
      at::bmm_out(out, weight_, by_group(columns, groups_));
    }
    return target;
  }

  at::Tensor columns_gradient(const at::Tensor& grad_output_rows,
                              const at::Tensor& buffer) override {
    at::Tensor out = by_group(buffer, groups_);
    if (low_precision_) {
      bmm_float32_out(out, weight_.transpose(1, 2), grad_output_rows);
    } else {
      at::bmm_out(out, weight_.transpose(1, 2), grad_output_rows);
    }
    return buffer;
  }

  void add_weight_gradient(const at::Tensor& grad_output_rows,
                           const at::Tensor& columns) override {
    at::Tensor& sum = weight_gradient_sum();
    const at::Tensor columns_t = by_group(columns, groups_).transpose(1, 2);
    if (low_precision_) {  // each tile's product in float32, summed in float32
      at::Tensor tile = at::empty(sum.sizes(), sum.options());
      bmm_float32_out(tile, grad_output_rows, columns_t);
      sum.add_(tile);
    } else {
      sum.baddbmm_(grad_output_rows, columns_t);
    }
  }

  at::Tensor weight_gradient() override { return weight_gradient_sum().view(sizes_); }

 private:
  at::Tensor& weight_gradient_sum() {
    if (!grad_weight_.defined()) {
      grad_weight_ = at::zeros(weight_.sizes(), weight_.options().dtype(
                                                    accumulate_type(weight_.scalar_type())));
    }
    return grad_weight_;
  }

  at::Tensor weight_, bias_, grad_weight_;
  std::vector<int64_t> sizes_;
  int64_t groups_;
  bool low_precision_;
};

// 1x1 convolution of a (K, cols) matrix with an (O, K / groups) weight: (O, cols).
at::Tensor convolve_1x1(const at::Tensor& matrix, const at::Tensor& weight,
                        const optional<at::Tensor>& bias, int64_t groups) {
  const at::Tensor out = at::convolution(
      matrix.view({1, matrix.size(0), 1, matrix.size(1)}),
      weight.view({weight.size(0), weight.numel() / weight.size(0), 1, 1}), bias, {1, 1},
      {0, 0}, {1, 1}, false, {0, 0}, groups);
  return out.reshape({out.size(1), out.size(3)});  // a view unless cuDNN chose another layout
}

class ConvolutionProducts final : public TileProducts {
 public:
  ConvolutionProducts(const at::Tensor& weight, const optional<at::Tensor>& bias,
                      int64_t groups)
      : weight_(weight), bias_(bias), groups_(groups) {}

  bool in_place() const override { return false; }

  at::Tensor forward(const at::Tensor& columns, const at::Tensor&) override {
    return convolve_1x1(columns, weight_, bias_, groups_);
  }

  // A 1x1 convolution with the transposed weight.
  at::Tensor columns_gradient(const at::Tensor& grad_output_rows, const at::Tensor&) override {
    if (!weight_t_.defined()) {
      const int64_t out_channels = weight_.size(0);
      weight_t_ = weight_.view({groups_, out_channels / groups_, -1})
                      .transpose(1, 2)
                      .contiguous()
                      .view({-1, out_channels / groups_});
    }
    return convolve_1x1(grad_output_rows.reshape({weight_.size(0), -1}), weight_t_, {},
                        groups_);
  }

  // A 1x1 convolution's weight gradient.
  void add_weight_gradient(const at::Tensor& grad_output_rows,
                           const at::Tensor& columns) override {
    const int64_t out_channels = weight_.size(0);
    const int64_t cols = columns.size(1);
    const at::Tensor tile =
        std::get<1>(at::convolution_backward(
                        grad_output_rows.reshape({1, out_channels, 1, cols}),
                        columns.view({1, columns.size(0), 1, cols}),
                        weight_.view({out_channels, -1, 1, 1}), nullopt, {1, 1}, {0, 0},
                        {1, 1}, false, {0, 0}, groups_, {false, true, false}))
            .reshape(weight_.sizes());
    grad_weight_ = grad_weight_.defined() ? grad_weight_.add_(tile) : tile;
  }

  at::Tensor weight_gradient() override {
    return grad_weight_.defined() ? grad_weight_ : at::zeros_like(weight_);
  }

 private:
  at::Tensor weight_, weight_t_, grad_weight_;
  optional<at::Tensor> bias_;
  int64_t groups_;
};

}  // namespace

std::unique_ptr<TileProducts> batched_products(const at::Tensor& weight,
                                               const optional<at::Tensor>& bias,
                                               int64_t groups) {
  return std::make_unique<BatchedProducts>(weight, bias, groups);
}

std::unique_ptr<TileProducts> convolution_products(const at::Tensor& weight,
                                                   const optional<at::Tensor>& bias,
                                                   int64_t groups) {
  return std::make_unique<ConvolutionProducts>(weight, bias, groups);
}

}  // namespace mmlstride

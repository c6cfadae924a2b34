// The CPU's tile products through oneDNN's matmul, the library behind F.conv2d and F.linear
// on the CPU, reached through the dispatcher (mkldnn::_linear_pointwise, torch's
// prepacking-free linear), bit for bit the same whatever the thread count
// (tests/op/test_oracles.py). Other dtypes, a torch built without oneDNN, and
// torch.backends.mkldnn disabled take ATen's batched products.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "ls_conv_cpu.h"

namespace mmlstride {
namespace {

// oneDNN's linear, Y = X W^T + B for X (M, K), W (N, K) and B (N) of any strides, when this
// torch registers it for the CPU with the schema this file calls.
const optional<c10::OperatorHandle>& onednn_linear() {
  static const optional<c10::OperatorHandle> op =
      []() -> optional<c10::OperatorHandle> {
    const auto handle =
        c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
        handle->schema().arguments().size() != 6 || handle->schema().returns().size() != 1) {
      return nullopt;
    }
    return handle;
  }();
  return op;
}

// a @ b^T through oneDNN's matmul: a (M, K) and b (N, K), any strides; a new (M, N) tensor.
at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b) {
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(b);
  stack.emplace_back(c10::IValue());
  stack.emplace_back(c10::IValue(std::string("none")));
  stack.emplace_back(c10::IValue(c10::List<optional<at::Scalar>>()));
  stack.emplace_back(c10::IValue());
  onednn_linear()->callBoxed(&stack);
  return stack.at(0).toTensor();
}

// oneDNN's products per group for the forward and (with `weight_gradient_`) the weight
// gradient; ATen's for the columns gradient, where oneDNN's ran 15% slower (r50-s3, r50-s4).
class OneDnnProducts final : public TileProducts {
 public:
  OneDnnProducts(const at::Tensor& weight, const optional<at::Tensor>& bias, int64_t groups,
                 bool weight_gradient)
      : batched_(batched_products(weight, bias, groups)),
        weight_(weight.view({groups, weight.size(0) / groups, weight.numel() / weight.size(0)})),
        bias_(bias ? bias->view({groups, weight.size(0) / groups, 1}) : at::Tensor()),
        sizes_(weight.sizes().vec()),
        groups_(groups),
        weight_gradient_(weight_gradient) {}

  bool in_place() const override { return true; }

  at::Tensor forward(const at::Tensor& columns, const at::Tensor& target) override {
    const at::Tensor columns_g = columns.view({groups_, -1, columns.size(1)});
    for (int64_t group = 0; group < groups_; ++group) {
      target.select(0, group).copy_(onednn_matmul(weight_.select(0, group),
                                           columns_g.select(0, group).t()));
    }
    if (bias_.defined()) target.add_(bias_);
    return target;
  }

  at::Tensor columns_gradient(const at::Tensor& grad_output_rows,
                              const at::Tensor& buffer) override {
    return batched_->columns_gradient(grad_output_rows, buffer);
  }

  void add_weight_gradient(const at::Tensor& grad_output_rows,
                           const at::Tensor& columns) override {
    if (!weight_gradient_) return batched_->add_weight_gradient(grad_output_rows, columns);
    if (!grad_weight_.defined()) grad_weight_ = at::zeros(weight_.sizes(), weight_.options());
    const at::Tensor columns_g = columns.view({groups_, -1, columns.size(1)});
    for (int64_t group = 0; group < groups_; ++group) {  // each tile's product added
      grad_weight_.select(0, group).add_(
          onednn_matmul(grad_output_rows.select(0, group), columns_g.select(0, group)));
    }
  }

  at::Tensor weight_gradient() override {
    if (!weight_gradient_) return batched_->weight_gradient();
    return grad_weight_.defined() ? grad_weight_.view(sizes_)
                                  : at::zeros(sizes_, weight_.options());
  }

 private:
  std::unique_ptr<TileProducts> batched_;
  at::Tensor weight_, bias_, grad_weight_;
  std::vector<int64_t> sizes_;
  int64_t groups_;
  bool weight_gradient_;
};

}  // namespace

std::unique_ptr<TileProducts> onednn_products(const at::Tensor& input, const at::Tensor& weight,
                                              const optional<at::Tensor>& bias, int64_t groups,
                                              bool onednn_weight_gradient) {
  if (input.scalar_type() != at::kFloat || !at::globalContext().userEnabledMkldnn() ||
      !onednn_linear().has_value()) {
    return nullptr;
  }
  return std::make_unique<OneDnnProducts>(weight, bias, groups, onednn_weight_gradient);
}

}  // namespace mmlstride

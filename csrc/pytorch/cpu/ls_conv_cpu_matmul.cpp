// The CPU's matrix products of the forward's tiles and of the weight gradient. float32 ones
// go through oneDNN's matmul, the library behind F.conv2d and F.linear on the CPU, reached
// through the dispatcher (mkldnn::_linear_pointwise, torch's prepacking-free linear), bit
// for bit the same whatever the thread count (tests/test_oracles.py). Other dtypes, a torch
// built without oneDNN, and torch.backends.mkldnn disabled take ATen's products (MKL), at
// the callers.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "../ls_conv_kernels.h"

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

}  // namespace

bool ls_conv_onednn_matmul_cpu(const at::Tensor& like) {
  return !like.is_cuda() && like.scalar_type() == at::kFloat &&
         at::globalContext().userEnabledMkldnn() && onednn_linear().has_value();
}

at::Tensor ls_conv_onednn_linear_cpu(const at::Tensor& a, const at::Tensor& b,
                                     const optional<at::Tensor>& bias) {
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(a);
  stack.emplace_back(b);
  stack.emplace_back(bias ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(c10::IValue(std::string("none")));
  stack.emplace_back(c10::IValue(c10::List<optional<at::Scalar>>()));
  stack.emplace_back(c10::IValue());
  onednn_linear()->callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace mmlstride

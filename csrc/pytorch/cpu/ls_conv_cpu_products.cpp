// The CPU's products through oneDNN, the library behind F.conv2d and F.linear on the CPU:
// the tiles' through its matmul, reached through the dispatcher (mkldnn::_linear_pointwise,
// torch's prepacking-free linear), and the forward bands' and the columns gradient's through
// its batch-reduce GEMM micro-kernel (cpublas::brgemm), all bit for bit the same whatever the
// thread count
// (tests/op/test_oracles.py). Other dtypes, a torch built without oneDNN or without the
// micro-kernel, and torch.backends.mkldnn disabled take ATen's products.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>

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

// oneDNN's products per group: its matmul for the forward and (with `weight_gradient_`) the
// weight gradient, its micro-kernel for the columns gradient (where its matmul ran 15% slower
// than ATen's: r50-s3, r50-s4).
class OneDnnProducts final : public TileProducts {
 public:
  OneDnnProducts(const at::Tensor& weight, const optional<at::Tensor>& bias, int64_t groups,
                 bool weight_gradient, bool micro_kernel_columns_gradient)
      : batched_(batched_products(weight, bias, groups)),
        weight_(weight.view({groups, weight.size(0) / groups, weight.numel() / weight.size(0)})),
        bias_(bias ? bias->view({groups, weight.size(0) / groups, 1}) : at::Tensor()),
        sizes_(weight.sizes().vec()),
        groups_(groups),
        weight_gradient_(weight_gradient),
        micro_kernel_columns_gradient_(micro_kernel_columns_gradient) {}

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

  // wᵀ · dy by oneDNN's micro-kernel, in parallel over blocks of the columns gradient, where
  // it runs (15-25% faster than ATen's batched product, which also packs dy again); else ATen's.
  at::Tensor columns_gradient(const at::Tensor& grad_output_rows,
                              const at::Tensor& buffer) override {
    if (!micro_kernel_columns_gradient_ || grad_output_rows.stride(2) != 1) {
      return batched_->columns_gradient(grad_output_rows, buffer);
    }
    if (!weight_t_.defined()) weight_t_ = weight_.transpose(1, 2).contiguous();
    const int64_t group_out = weight_t_.size(2);
    const int64_t group_rows = weight_t_.size(1);
    const int64_t cols = buffer.size(1);
    const int64_t row_blocks = (group_rows + kBlockRows - 1) / kBlockRows;
    const int64_t column_blocks = (cols + kBlockColumns - 1) / kBlockColumns;
    const float* weight_t = weight_t_.const_data_ptr<float>();
    const float* grad = grad_output_rows.const_data_ptr<float>();
    float* out = buffer.mutable_data_ptr<float>();
    const int64_t grad_group = grad_output_rows.stride(0);
    const int64_t ldb = grad_output_rows.stride(1);
    at::parallel_for(0, groups_ * row_blocks * column_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t group = item / (row_blocks * column_blocks);
        const int64_t row = item / column_blocks % row_blocks * kBlockRows;
        const int64_t column = item % column_blocks * kBlockColumns;
        micro_kernel_product(std::min(kBlockRows, group_rows - row),
                             std::min(kBlockColumns, cols - column), group_out,
                             weight_t + (group * group_rows + row) * group_out,
                             grad + group * grad_group + column, ldb, nullptr,
                             out + (group * group_rows + row) * cols + column, cols);
      }
    });
    return buffer;
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
  // The columns gradient's blocks, each one thread's.
  static constexpr int64_t kBlockRows = 128;
  static constexpr int64_t kBlockColumns = 256;

  at::Tensor weight_, weight_t_, bias_, grad_weight_;
  std::vector<int64_t> sizes_;
  int64_t groups_;
  bool weight_gradient_, micro_kernel_columns_gradient_;
};

// The micro-kernel's blocks: columns of the output per call, and rows of the columns (the
// reduction) per call, added up in the output. A block of columns at most 576 x 64 floats
// (147 KiB) stays in the core's L2 cache; over the whole reduction at once, r50-s3's
// (2304 x 64, 590 KiB) ran 20% slower, and N = 100 columns 15% slower than 64.
constexpr int64_t kPanelColumns = 64;
constexpr int64_t kPanelReduction = 576;

}  // namespace

bool micro_kernel_products() {
#if defined(CPUBLAS_BRGEMM_F32F32F32) && defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2 && at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

void micro_kernel_product(int64_t m, int64_t n, int64_t k, const float* a, const float* b,
                          int64_t ldb, const float* bias, float* out, int64_t ldc) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  for (int64_t column = 0; column < n; column += kPanelColumns) {
    const int64_t columns = std::min(kPanelColumns, n - column);
    float* panel = out + column;
    for (int64_t row = 0; row < k; row += kPanelReduction) {
      at::native::cpublas::brgemm(m, columns, std::min(kPanelReduction, k - row), k, ldb, ldc,
                                  /*add_C=*/row > 0, a + row, b + row * ldb + column, panel,
                                  /*is_vnni=*/false);
    }
    if (bias == nullptr) continue;
    for (int64_t o = 0; o < m; ++o) {  // while the panel is in cache
      float* values = panel + o * ldc;
      const float value = bias[o];
#pragma omp simd
      for (int64_t x = 0; x < columns; ++x) values[x] += value;
    }
  }
#else
  TORCH_CHECK(false, "micro_kernel_product: this torch has no float32 cpublas::brgemm");
#endif
}

std::unique_ptr<TileProducts> onednn_products(const at::Tensor& input, const at::Tensor& weight,
                                              const optional<at::Tensor>& bias, int64_t groups,
                                              bool weight_gradient) {
  if (input.scalar_type() != at::kFloat || !at::globalContext().userEnabledMkldnn() ||
      !onednn_linear().has_value()) {
    return nullptr;
  }
  // A weight larger than the input (r50-s4) keeps ATen's products for both gradients: oneDNN
  // returns the weight gradient as a temporary of the weight's size, and the micro-kernel
  // needs wᵀ copied (9 MiB more at the peak, and 5% slower there).
  const bool small_weight = weight.numel() <= input.numel();
  return std::make_unique<OneDnnProducts>(weight, bias, groups, weight_gradient && small_weight,
                                          small_weight && micro_kernel_products());
}

}  // namespace mmlstride

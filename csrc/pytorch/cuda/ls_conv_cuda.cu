// CUDA launchers of the learnable-stride convolution's sampling kernels: dtype
// dispatch, tensors to pointers, the tables buffer, the current stream and launch checks.
// The stride is never copied to the host: the tables kernel reads it on the device.
// The launch decisions (table layout, grid size, index width, kernel variant, scatter or
// gather of the input gradient) are in the torch-free
// csrc/common/cuda/ls_conv_cuda_launch.cuh, which the CPU emulation also runs.
// Also the fused sampling GEMMs' launchers (forward, weight gradient), and the CUDA backend
// that gives them to the driver of ls_conv.cpp, with its registration.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <mutex>
#include <unordered_map>

#include "../../common/cuda/ls_conv_cuda_launch.cuh"
#include "../ls_conv_backend.h"

namespace mmlstride {
namespace {

// The CUDA element type of an ATen scalar type (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Multiprocessors of a device, read once per device.
int multiprocessor_count(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> counts;
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = counts.find(device);
  if (found == counts.end()) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    found = counts.emplace(device, count).first;
  }
  return found->second;
}

// Compute capability major of a device, read once per device.
int compute_capability_major(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> majors;
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = majors.find(device);
  if (found == majors.end()) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    found = majors.emplace(device, major).first;
  }
  return found->second;
}

// Runs kernel<<<blocks, kThreads>>> on `stream` and checks the launch; the launch
// policy of csrc/common/cuda/ls_conv_cuda_launch.cuh.
struct StreamLaunch {
  cudaStream_t stream;

  template <typename Kernel, typename... Args>
  void operator()(cuda::KernelKind, int, int, int64_t blocks, Kernel kernel,
                  Args... args) const {
    kernel<<<static_cast<unsigned>(blocks), cuda::kThreads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// An input of zero height or width has no pixel to load: every sample is 0, so
// the columns are zeros and the gradients get nothing.
bool has_no_pixels(const LSConvGeometry& g) { return g.height == 0 || g.width == 0; }

template <typename scalar_t>
const typename CudaType<scalar_t>::type* cuda_data(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<scalar_t>::type*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
typename CudaType<scalar_t>::type* cuda_mutable_data(const at::Tensor& t) {
  return t.defined()
      ? reinterpret_cast<typename CudaType<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>())
      : nullptr;
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

template <typename Acc>
cuda::TableLayout layout_for(const LSConvGeometry& g, int device) {
  return cuda::table_layout<Acc>(g, cuda::max_grid_blocks(multiprocessor_count(device)));
}

// The sampling tables of `prepared` (a buffer laid out by layout_for<Acc>).
template <typename Acc>
cuda::SamplingTables<Acc> tables_of(const PreparedStride& prepared, const LSConvGeometry& g) {
  return cuda::tables_at<Acc>(prepared.tables.mutable_data_ptr<uint8_t>(),
                              layout_for<Acc>(g, prepared.tables.device().index()));
}

PreparedStride ls_conv_prepare_cuda(const at::Tensor& stride, const at::Tensor& phase,
                                    const at::Tensor& input, const LSConvGeometry& g,
                                    bool stride_gradient) {
  const int device = input.device().index();
  // The tables kernel reads float or double; other floating dtypes convert exactly to float.
  // The phase is read in the stride's (a float64 phase with a float32 stride: in float64).
  const bool in_double = stride.scalar_type() == at::kDouble ||
                         (phase.defined() && phase.scalar_type() == at::kDouble);
  const at::ScalarType table_input = in_double ? at::kDouble : at::kFloat;
  const at::Tensor values = stride.to(table_input).contiguous();
  const at::Tensor phase_values = phase.defined() ? phase.to(table_input).contiguous()
                                                  : at::Tensor();
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream(device)};
  PreparedStride prepared;
  auto make = [&](auto acc_tag) {
    using Acc = decltype(acc_tag);
    const cuda::TableLayout layout = layout_for<Acc>(g, device);
    prepared.tables = at::empty({layout.bytes}, input.options().dtype(at::kByte));
    const cuda::SamplingTables<Acc> tables =
        cuda::tables_at<Acc>(prepared.tables.mutable_data_ptr<uint8_t>(), layout);
    if (in_double) {
      cuda::launch_tables(launch, values.const_data_ptr<double>(),
                          phase.defined() ? phase_values.const_data_ptr<double>() : nullptr, g,
                          tables);
    } else {
      cuda::launch_tables(launch, values.const_data_ptr<float>(),
                          phase.defined() ? phase_values.const_data_ptr<float>() : nullptr, g,
                          tables);
    }
    if (stride_gradient) {
      prepared.partials =
          prepared.tables.narrow(0, layout.stride_sum, cuda::kGradientSums * sizeof(double))
              .view(at::kDouble)
              .view({1, cuda::kGradientSums});
    }
  };
  if (accumulate_type(input.scalar_type()) == at::kDouble) {
    make(double());
  } else {
    make(float());
  }
  return prepared;
}

void ls_conv_im2col_cuda(const at::Tensor& input, const LSConvGeometry& g,
                         const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                         const at::Tensor& columns) {
  if (cuda::tile_elements(g, row_begin, row_end) == 0) return;
  if (has_no_pixels(g)) {
    columns.zero_();
    return;
  }
  const int device = input.device().index();
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream(device)};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_im2col_cuda", [&] {
        using T = typename CudaType<scalar_t>::type;
        using Acc = typename cuda::Accumulate<T>::type;
        cuda::launch_im2col_tile(launch, multiprocessor_count(device), cuda_data<scalar_t>(input),
                                 input.numel(), g, tables_of<Acc>(stride, g), row_begin, row_end,
                                 cuda_mutable_data<scalar_t>(columns));
      });
}

void ls_conv_backward_sampling_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                    const LSConvGeometry& g, const PreparedStride& stride,
                                    int64_t row_begin, int64_t row_end,
                                    const at::Tensor& grad_input, bool stride_gradient,
                                    const at::Tensor& columns) {
  TORCH_CHECK(grad_input.defined() || stride_gradient,
              "grad_input is undefined and stride_gradient=false, expected either");
  TORCH_CHECK(!stride_gradient || stride.partials.defined(),
              "stride_gradient=true expected a stride prepared with its gradient's scratch");
  if (cuda::tile_elements(g, row_begin, row_end) == 0) return;
  if (has_no_pixels(g)) {
    if (columns.defined()) columns.zero_();
    return;
  }
  const int device = input.device().index();
  const int multiprocessors = multiprocessor_count(device);
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream(device)};
  // Under torch.use_deterministic_algorithms(True) the input gradient is gathered per
  // pixel instead of scattered with atomicAdd.
  const cuda::BackwardPlan plan =
      cuda::plan_backward(grad_input.defined(), stride_gradient,
                          stride_gradient && stride.phase_gradient, columns.defined(),
                          at::globalContext().deterministicAlgorithms());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_backward_sampling_cuda", [&] {
        using T = typename CudaType<scalar_t>::type;
        using Acc = typename cuda::Accumulate<T>::type;
        cuda::launch_backward_tile(launch, multiprocessors, plan,
                                   grad_columns.const_data_ptr<Acc>(), cuda_data<scalar_t>(input),
                                   input.numel(), g, tables_of<Acc>(stride, g), row_begin,
                                   row_end, data_or_null<Acc>(grad_input),
                                   cuda_mutable_data<scalar_t>(columns));
      });
}

bool ls_conv_fused_cuda(const at::Tensor& input, const LSConvGeometry& g) {
  if (has_no_pixels(g)) return false;
  switch (input.scalar_type()) {
    case at::kHalf:
    case at::kDouble:
      return true;
    case at::kBFloat16:
      return compute_capability_major(input.device().index()) >= 8;
    default:
      return false;
  }
}

void ls_conv_forward_fused_cuda(const at::Tensor& input, const at::Tensor& weight,
                                const optional<at::Tensor>& bias, const LSConvGeometry& g,
                                const PreparedStride& stride, int64_t groups,
                                at::Tensor& output) {
  const int device = input.device().index();
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream(device)};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_forward_fused_cuda", [&] {
        using T = typename CudaType<scalar_t>::type;
        using Acc = typename cuda::Accumulate<T>::type;
        cuda::launch_forward_fused(launch, cuda_data<scalar_t>(input), input.numel(),
                                   cuda_data<scalar_t>(weight),
                                   bias ? cuda_data<scalar_t>(*bias) : nullptr, g,
                                   input.size(0), weight.size(0), groups,
                                   tables_of<Acc>(stride, g), cuda_mutable_data<scalar_t>(output));
      });
}

at::Tensor ls_conv_weight_gradient_fused_cuda(const at::Tensor& grad_output,
                                              const at::Tensor& input, const LSConvGeometry& g,
                                              const PreparedStride& stride, int64_t groups,
                                              int64_t out_channels) {
  const int device = input.device().index();
  StreamLaunch launch{c10::cuda::getCurrentCUDAStream(device)};
  const cuda::PixelSplit split =
      cuda::weight_gradient_split(g, input.size(0), out_channels, groups,
                                  int(input.element_size()), multiprocessor_count(device));
  const int64_t reduction = g.channels / groups * g.kernel_h * g.kernel_w;
  const at::Tensor partial = at::empty({split.splits, out_channels, reduction},
                                       input.options().dtype(accumulate_type(input.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_weight_gradient_fused_cuda", [&] {
        using T = typename CudaType<scalar_t>::type;
        using Acc = typename cuda::Accumulate<T>::type;
        cuda::launch_weight_gradient_fused(
            launch, cuda_data<scalar_t>(grad_output), cuda_data<scalar_t>(input), input.numel(),
            g, input.size(0), out_channels, groups, split, tables_of<Acc>(stride, g),
            partial.mutable_data_ptr<Acc>());
      });
  // The splits summed in a fixed order (the first alone: no copy).
  const at::Tensor sum = split.splits == 1 ? partial[0] : partial.sum(0);
  return sum.view({out_channels, g.channels / groups, g.kernel_h, g.kernel_w});
}

// float32 products as 1x1 convolutions, so that they follow the float32 precision rule of
// the convolution LSConv replaces: torch.backends.cudnn.allow_tf32 (on by default), as
// F.conv2d does, where batched matrix products would follow
// torch.backends.cuda.matmul.allow_tf32 (off by default). Other dtypes take batched
// products. The fused sampling GEMMs (float16; bfloat16 from sm_80; float64) take the
// whole forward and the weight gradient, gathering the columns into shared memory rather
// than writing them to global memory; float32 keeps the columns and cuDNN's products.
class CudaBackend final : public LSConvBackend {
 public:
  void check_dtype(const at::Tensor& input) const override {
    const at::ScalarType dtype = input.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16,
                     "input.dtype=", dtype, " expected float32, float64, float16 or bfloat16");
  }

  // Large enough that the usual detection layers take one or two tiles, so each launch
  // fills the GPU.
  int64_t tile_bytes() const override { return int64_t(32) << 20; }

  PreparedStride prepare(const at::Tensor& stride, const at::Tensor& phase,
                         const at::Tensor& input, const LSConvGeometry& geometry,
                         bool stride_gradient) const override {
    return ls_conv_prepare_cuda(stride, phase, input, geometry, stride_gradient);
  }

  void im2col(const at::Tensor& input, const LSConvGeometry& geometry,
              const PreparedStride& stride, int64_t row_begin, int64_t row_end,
              const at::Tensor& columns) const override {
    ls_conv_im2col_cuda(input, geometry, stride, row_begin, row_end, columns);
  }

  void backward_sampling(const at::Tensor& grad_columns, const at::Tensor& input,
                         const LSConvGeometry& geometry, const PreparedStride& stride,
                         int64_t row_begin, int64_t row_end, const at::Tensor& grad_input,
                         bool stride_gradient, const at::Tensor& columns) const override {
    ls_conv_backward_sampling_cuda(grad_columns, input, geometry, stride, row_begin, row_end,
                                   grad_input, stride_gradient, columns);
  }

  std::unique_ptr<TileProducts> products(const at::Tensor& input, const at::Tensor& weight,
                                         const optional<at::Tensor>& bias, int64_t groups,
                                         bool) const override {
    return input.scalar_type() == at::kFloat ? convolution_products(weight, bias, groups)
                                             : batched_products(weight, bias, groups);
  }

  bool forward_whole(const at::Tensor& input, const at::Tensor& weight,
                     const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                     const PreparedStride& stride, int64_t groups,
                     at::Tensor& output) const override {
    if (!ls_conv_fused_cuda(input, geometry)) return false;
    ls_conv_forward_fused_cuda(input, weight, bias, geometry, stride, groups, output);
    return true;
  }

  at::Tensor weight_gradient_whole(const at::Tensor& grad_output, const at::Tensor& input,
                                   const LSConvGeometry& geometry, const PreparedStride& stride,
                                   int64_t groups) const override {
    if (!ls_conv_fused_cuda(input, geometry)) return at::Tensor();
    return ls_conv_weight_gradient_fused_cuda(grad_output, input, geometry, stride, groups,
                                              grad_output.size(1));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(mmlstride, CUDA, m) {
  m.impl("ls_conv2d", &ls_conv2d_kernel<CudaBackend>);
  m.impl("ls_conv2d_backward", &ls_conv2d_backward_kernel<CudaBackend>);
}

}  // namespace mmlstride

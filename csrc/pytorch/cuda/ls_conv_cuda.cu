// CUDA launchers of the learnable-stride convolution's sampling kernels
// (csrc/common/cuda/ls_conv_cuda_kernel.cuh): dtype dispatch, index width,
// grid size, the current stream, launch checks, the sum of the stride
// gradient's per-block partials, and the choice of the input gradient's
// kernel (atomic scatter, or gather under deterministic mode). Called by the
// host code of ls_conv.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "../../common/cuda/ls_conv_cuda_kernel.cuh"
#include "../ls_conv_kernels.h"

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

// Blocks of a grid-stride launch over `total` elements: one element per
// thread, at most 32 blocks per multiprocessor (enough to fill it; threads
// then loop), so the per-block stride partials stay small.
int64_t grid_blocks(int64_t total, int device) {
  const int multiprocessors = multiprocessor_count(device);
  const int64_t needed = (total + cuda::kThreads - 1) / cuda::kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(multiprocessors) * 32));
}

// Whether 32-bit indices address every element of the launch: the input, the
// tile's columns, the grid-stride loop's last increment, and the output rows.
bool fits_int32(const at::Tensor& input, int64_t total, int64_t blocks, int64_t row_end) {
  const int64_t largest = std::max({input.numel(), total + blocks * cuda::kThreads, row_end});
  return largest <= std::numeric_limits<int32_t>::max();
}

// An input of zero height or width has no pixel to load: every sample is 0, so
// the columns are zeros and the gradients get nothing.
bool has_no_pixels(const LSConvGeometry& g) { return g.height == 0 || g.width == 0; }

int64_t tile_elements(const LSConvGeometry& g, int64_t row_begin, int64_t row_end) {
  return g.channels * g.kernel_h * g.kernel_w * (row_end - row_begin) * g.out_w;
}

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

template <typename scalar_t, typename Index>
void launch_im2col(const at::Tensor& input, const LSConvGeometry& g, int64_t row_begin,
                   int64_t row_end, const at::Tensor& columns, int64_t blocks,
                   cudaStream_t stream) {
  cuda::ls_conv_im2col_kernel<typename CudaType<scalar_t>::type, Index>
      <<<blocks, cuda::kThreads, 0, stream>>>(cuda_data<scalar_t>(input), g, Index(row_begin),
                                              Index(row_end), cuda_mutable_data<scalar_t>(columns));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename Index, bool kInput, bool kStride, bool kColumns>
void launch_backward(const at::Tensor& grad_columns, const at::Tensor& input,
                     const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                     const at::Tensor& grad_input, const at::Tensor& block_partials,
                     const at::Tensor& columns, int64_t blocks, cudaStream_t stream) {
  using T = typename CudaType<scalar_t>::type;
  using Acc = typename cuda::Accumulate<T>::type;
  cuda::ls_conv_backward_kernel<T, Index, kInput, kStride, kColumns>
      <<<blocks, cuda::kThreads, 0, stream>>>(
          grad_columns.const_data_ptr<Acc>(), cuda_data<scalar_t>(input), g, Index(row_begin),
          Index(row_end), kInput ? grad_input.mutable_data_ptr<Acc>() : nullptr,
          kStride ? block_partials.mutable_data_ptr<Acc>() : nullptr,
          kColumns ? cuda_mutable_data<scalar_t>(columns) : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename Index>
void launch_input_gradient(const at::Tensor& grad_columns, const LSConvGeometry& g,
                           int64_t row_begin, int64_t row_end, const cuda::PixelBox& box,
                           const at::Tensor& grad_input, int64_t blocks, cudaStream_t stream) {
  using T = typename CudaType<scalar_t>::type;
  using Acc = typename cuda::Accumulate<T>::type;
  cuda::ls_conv_input_gradient_kernel<T, Index><<<blocks, cuda::kThreads, 0, stream>>>(
      grad_columns.const_data_ptr<Acc>(), g, Index(row_begin), Index(row_end), box,
      grad_input.mutable_data_ptr<Acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t box_pixels(const LSConvGeometry& g, const cuda::PixelBox& box) {
  return (box.image_end - box.image_begin) * g.channels * (box.y_end - box.y_begin) * g.width;
}

// Chooses the kernel variant for the gradients asked for (grad_input and/or
// stride partials, with or without columns).
template <typename scalar_t, typename Index>
void launch_backward_variant(const at::Tensor& grad_columns, const at::Tensor& input,
                             const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                             const at::Tensor& grad_input, const at::Tensor& block_partials,
                             const at::Tensor& columns, int64_t blocks, cudaStream_t stream) {
  const bool input_grad = grad_input.defined();
  const bool stride_grad = block_partials.defined();
  const bool write_columns = columns.defined();
#define LSCONV_LAUNCH(kInput, kStride, kColumns)                                              \
  launch_backward<scalar_t, Index, kInput, kStride, kColumns>(grad_columns, input, g,        \
                                                              row_begin, row_end, grad_input, \
                                                              block_partials, columns, blocks, \
                                                              stream)
  if (input_grad && stride_grad) {
    if (write_columns) LSCONV_LAUNCH(true, true, true); else LSCONV_LAUNCH(true, true, false);
  } else if (input_grad) {
    if (write_columns) LSCONV_LAUNCH(true, false, true); else LSCONV_LAUNCH(true, false, false);
  } else {
    if (write_columns) LSCONV_LAUNCH(false, true, true); else LSCONV_LAUNCH(false, true, false);
  }
#undef LSCONV_LAUNCH
}

}  // namespace

void ls_conv_im2col_cuda(const at::Tensor& input, const LSConvGeometry& g, int64_t row_begin,
                         int64_t row_end, const at::Tensor& columns) {
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  if (has_no_pixels(g)) {
    columns.zero_();
    return;
  }
  const int64_t blocks = grid_blocks(total, input.device().index());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_im2col_cuda", [&] {
        if (fits_int32(input, total, blocks, row_end)) {
          launch_im2col<scalar_t, int32_t>(input, g, row_begin, row_end, columns, blocks, stream);
        } else {
          launch_im2col<scalar_t, int64_t>(input, g, row_begin, row_end, columns, blocks, stream);
        }
      });
}

void ls_conv_backward_sampling_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                                    const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                                    const at::Tensor& grad_input, const at::Tensor& stride_partials,
                                    const at::Tensor& columns) {
  TORCH_CHECK(grad_input.defined() || stride_partials.defined(),
              "grad_input and stride_partials are undefined, expected at least one defined");
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  if (has_no_pixels(g)) {
    if (columns.defined()) columns.zero_();
    return;
  }
  const int64_t blocks = grid_blocks(total, input.device().index());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index());
  const at::ScalarType accumulate =
      input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor block_partials = stride_partials.defined()
      ? at::empty({blocks, 2}, input.options().dtype(accumulate))
      : at::Tensor();
  // Under torch.use_deterministic_algorithms(True) the input gradient is
  // gathered per pixel instead of scattered with atomicAdd.
  const bool gather_input = grad_input.defined() && at::globalContext().deterministicAlgorithms();
  const at::Tensor scatter_input = gather_input ? at::Tensor() : grad_input;
  cuda::PixelBox boxes[3];
  const int box_count = gather_input ? cuda::reachable_pixel_boxes(g, row_begin, row_end, boxes) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "ls_conv_backward_sampling_cuda", [&] {
        const bool small = fits_int32(input, total, blocks, row_end);
        if (scatter_input.defined() || block_partials.defined()) {
          if (small) {
            launch_backward_variant<scalar_t, int32_t>(grad_columns, input, g, row_begin,
                                                       row_end, scatter_input, block_partials,
                                                       columns, blocks, stream);
          } else {
            launch_backward_variant<scalar_t, int64_t>(grad_columns, input, g, row_begin,
                                                       row_end, scatter_input, block_partials,
                                                       columns, blocks, stream);
          }
        } else if (columns.defined()) {
          if (small) {
            launch_im2col<scalar_t, int32_t>(input, g, row_begin, row_end, columns, blocks,
                                             stream);
          } else {
            launch_im2col<scalar_t, int64_t>(input, g, row_begin, row_end, columns, blocks,
                                             stream);
          }
        }
        for (int k = 0; k < box_count; ++k) {
          const int64_t pixels = box_pixels(g, boxes[k]);
          const int64_t pixel_blocks = grid_blocks(pixels, input.device().index());
          if (small && fits_int32(input, pixels, pixel_blocks, row_end)) {
            launch_input_gradient<scalar_t, int32_t>(grad_columns, g, row_begin, row_end,
                                                     boxes[k], grad_input, pixel_blocks, stream);
          } else {
            launch_input_gradient<scalar_t, int64_t>(grad_columns, g, row_begin, row_end,
                                                     boxes[k], grad_input, pixel_blocks, stream);
          }
        }
      });
  if (stride_partials.defined()) {
    // A fixed-order sum (no atomics): the stride gradient is deterministic.
    stride_partials.add_(block_partials.sum(at::IntArrayRef{0}, /*keepdim=*/true, at::kDouble));
  }
}

}  // namespace mmlstride

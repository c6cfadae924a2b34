// The launch decisions of the CUDA sampling kernels, for one tile of output rows: grid
// sizes, the index width, the backward kernel variant for the gradients asked for, the
// atomic scatter or the deterministic gather of the input gradient, and the fixed-order
// sum of the stride gradient's per-block partials.
// Plain CUDA C++ with no torch header, written against a launch policy, so the same code
// makes the real launches (csrc/pytorch/cuda/ls_conv_cuda.cu) and runs on the CPU
// emulation (tests/cuda/emulation), where the tests see what was launched.
//
// A policy is called as launch(kind, index_bytes, variant, blocks, kernel, args...) and
// must run kernel<<<blocks, kThreads>>>(args...) in order on one stream; kind,
// index_bytes and variant (the backward's LaunchVariant bits) only describe the launch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ls_conv_cuda_kernel.cuh"

namespace mmlstride {
namespace cuda {

enum class KernelKind : int { kIm2col = 0, kBackward = 1, kInputGradient = 2, kSumPartials = 3 };

// Bits of the backward kernel's variant (its template flags).
enum LaunchVariant : int { kVariantInput = 1, kVariantStride = 2, kVariantColumns = 4 };

// Blocks per multiprocessor at most: enough to fill it (threads then loop), so the
// per-block stride partials stay few.
constexpr int64_t kBlocksPerMultiprocessor = 32;

// The most blocks any launch of a tile uses (the size of the block-partials scratch).
inline int64_t max_grid_blocks(int multiprocessors) {
  return std::max<int64_t>(1, int64_t(multiprocessors) * kBlocksPerMultiprocessor);
}

// Blocks of a grid-stride launch over `total` elements, one element per thread.
inline int64_t grid_blocks(int64_t total, int multiprocessors) {
  const int64_t needed = (total + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, max_grid_blocks(multiprocessors)));
}

// Whether 32-bit indices address every element of a launch: the input, the launch's
// elements and its grid-stride loop's last increment, and the output rows.
inline bool fits_int32(int64_t input_numel, int64_t total, int64_t blocks, int64_t row_end) {
  const int64_t largest = std::max({input_numel, total + blocks * int64_t(kThreads), row_end});
  return largest <= int64_t(std::numeric_limits<int32_t>::max());
}

inline int64_t tile_elements(const LSConvGeometry& g, int64_t row_begin, int64_t row_end) {
  return g.channels * g.kernel_h * g.kernel_w * (row_end - row_begin) * g.out_w;
}

inline int64_t box_pixels(const LSConvGeometry& g, const PixelBox& box) {
  return (box.image_end - box.image_begin) * g.channels * (box.y_end - box.y_begin) * g.width;
}

// What the backward of one tile computes, and how.
struct BackwardPlan {
  bool scatter_input;  // grad_input by atomicAdd in ls_conv_backward_kernel
  bool gather_input;   // grad_input by ls_conv_input_gradient_kernel: no atomics
  bool stride;         // the stride gradient
  bool columns;        // the tile's columns, for the weight gradient
};

// The input gradient is gathered under deterministic mode (bitwise repeatable), scattered
// with atomics otherwise.
inline BackwardPlan plan_backward(bool input, bool stride, bool columns, bool deterministic) {
  return BackwardPlan{input && !deterministic, input && deterministic, stride, columns};
}

// im2col of one tile: columns <- samples of input.
template <typename T, typename Launch>
void launch_im2col_tile(Launch& launch, int multiprocessors, const T* input,
                        int64_t input_numel, const LSConvGeometry& g, int64_t row_begin,
                        int64_t row_end, T* columns) {
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  const int64_t blocks = grid_blocks(total, multiprocessors);
  if (fits_int32(input_numel, total, blocks, row_end)) {
    launch(KernelKind::kIm2col, 4, 0, blocks, ls_conv_im2col_kernel<T, int32_t>, input, g,
           int32_t(row_begin), int32_t(row_end), columns);
  } else {
    launch(KernelKind::kIm2col, 8, 0, blocks, ls_conv_im2col_kernel<T, int64_t>, input, g,
           int64_t(row_begin), int64_t(row_end), columns);
  }
}

namespace detail {

template <bool kValue>
using Flag = std::integral_constant<bool, kValue>;

// ls_conv_backward_kernel with the template flags of `plan` (scatter, stride, columns).
template <typename T, typename Index, typename Launch, typename Acc>
void launch_backward_variant(Launch& launch, const BackwardPlan& plan, int64_t blocks,
                             const Acc* grad_columns, const T* input, const LSConvGeometry& g,
                             int64_t row_begin, int64_t row_end, Acc* grad_input,
                             Acc* block_partials, T* columns) {
  auto run = [&](auto input_flag, auto stride_flag, auto columns_flag) {
    constexpr bool kInput = decltype(input_flag)::value;
    constexpr bool kStride = decltype(stride_flag)::value;
    constexpr bool kColumns = decltype(columns_flag)::value;
    const int variant = (kInput ? kVariantInput : 0) | (kStride ? kVariantStride : 0) |
                        (kColumns ? kVariantColumns : 0);
    launch(KernelKind::kBackward, int(sizeof(Index)), variant, blocks,
           ls_conv_backward_kernel<T, Index, kInput, kStride, kColumns>, grad_columns, input, g,
           Index(row_begin), Index(row_end), kInput ? grad_input : nullptr,
           kStride ? block_partials : nullptr, kColumns ? columns : nullptr);
  };
  auto with_columns = [&](auto input_flag, auto stride_flag) {
    if (plan.columns) {
      run(input_flag, stride_flag, Flag<true>());
    } else {
      run(input_flag, stride_flag, Flag<false>());
    }
  };
  if (plan.scatter_input && plan.stride) {
    with_columns(Flag<true>(), Flag<true>());
  } else if (plan.scatter_input) {
    with_columns(Flag<true>(), Flag<false>());
  } else {  // the caller runs this kernel only for a scatter or the stride
    with_columns(Flag<false>(), Flag<true>());
  }
}

}  // namespace detail

// The backward sampling of one tile, as planned: the scatter/stride/columns pass (or im2col
// when only the columns are wanted), the gather of the input gradient over the input
// boxes the tile reaches, and the sum of the stride partials into stride_sum[0..1].
// block_partials: scratch for 2 * max_grid_blocks(multiprocessors) values.
template <typename T, typename Launch>
void launch_backward_tile(Launch& launch, int multiprocessors, const BackwardPlan& plan,
                          const typename Accumulate<T>::type* grad_columns, const T* input,
                          int64_t input_numel, const LSConvGeometry& g, int64_t row_begin,
                          int64_t row_end, typename Accumulate<T>::type* grad_input,
                          typename Accumulate<T>::type* block_partials, double* stride_sum,
                          T* columns) {
  using Acc = typename Accumulate<T>::type;
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  const int64_t blocks = grid_blocks(total, multiprocessors);
  const bool small = fits_int32(input_numel, total, blocks, row_end);
  if (plan.scatter_input || plan.stride) {
    if (small) {
      detail::launch_backward_variant<T, int32_t>(launch, plan, blocks, grad_columns, input, g,
                                                  row_begin, row_end, grad_input,
                                                  block_partials, columns);
    } else {
      detail::launch_backward_variant<T, int64_t>(launch, plan, blocks, grad_columns, input, g,
                                                  row_begin, row_end, grad_input,
                                                  block_partials, columns);
    }
  } else if (plan.columns) {
    launch_im2col_tile(launch, multiprocessors, input, input_numel, g, row_begin, row_end,
                       columns);
  }
  if (plan.gather_input) {
    PixelBox boxes[3];
    const int count = reachable_pixel_boxes(g, row_begin, row_end, boxes);
    for (int k = 0; k < count; ++k) {
      const int64_t pixels = box_pixels(g, boxes[k]);
      const int64_t pixel_blocks = grid_blocks(pixels, multiprocessors);
      if (small && fits_int32(input_numel, pixels, pixel_blocks, row_end)) {
        launch(KernelKind::kInputGradient, 4, 0, pixel_blocks,
               ls_conv_input_gradient_kernel<T, int32_t>, grad_columns, g, int32_t(row_begin),
               int32_t(row_end), boxes[k], grad_input);
      } else {
        launch(KernelKind::kInputGradient, 8, 0, pixel_blocks,
               ls_conv_input_gradient_kernel<T, int64_t>, grad_columns, g, int64_t(row_begin),
               int64_t(row_end), boxes[k], grad_input);
      }
    }
  }
  if (plan.stride) {
    launch(KernelKind::kSumPartials, 8, 0, int64_t(1), ls_conv_sum_partials_kernel<Acc>,
           static_cast<const Acc*>(block_partials), blocks, stride_sum);
  }
}

}  // namespace cuda
}  // namespace mmlstride

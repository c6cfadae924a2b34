// The launch decisions of the CUDA kernels: the sampling tables of a call (their layout
// in one device buffer, with the stride gradient's scratch) and, for one tile of output
// rows, grid sizes, the index width, the backward kernel variant for the gradients asked
// for, and the atomic scatter or the deterministic gather of the input gradient.
// Plain CUDA C++ with no torch header, written against a launch policy, so the same code
// makes the real launches (csrc/pytorch/cuda/ls_conv_cuda.cu) and runs on the CPU
// emulation (tests/cuda/emulation), where the tests see what was launched.
//
// The fused sampling GEMMs (ls_conv_cuda_fused.cuh) take the whole batch in one launch.
// A policy is called as launch(kind, index_bytes, variant, blocks, kernel, args...) and
// must run kernel<<<blocks, kThreads>>>(args...) in order on one stream; kind,
// index_bytes and variant (the backward's LaunchVariant bits) only describe the launch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ls_conv_cuda_fused.cuh"
#include "ls_conv_cuda_kernel.cuh"

namespace mmlstride {
namespace cuda {

enum class KernelKind : int {
  kIm2col = 0,
  kBackward = 1,
  kInputGradient = 2,
  kTables = 3,
  kForwardFused = 4,
  kWeightGradientFused = 5
};

// Bits of the backward kernel's variant (its template flags).
enum LaunchVariant : int {
  kVariantInput = 1,
  kVariantStride = 2,
  kVariantColumns = 4,
  kVariantPhase = 8
};

// Blocks per multiprocessor at most: enough to fill it (threads then loop), so the
// per-block stride partials stay few.
constexpr int64_t kBlocksPerMultiprocessor = 32;

// The most blocks any launch of a tile uses (the size of the block-partials scratch).
inline int64_t max_grid_blocks(int multiprocessors) {
  return std::max<int64_t>(1, int64_t(multiprocessors) * kBlocksPerMultiprocessor);
}

// Where SamplingTables<Acc> lie in one device buffer of `bytes` bytes (offsets in bytes,
// each aligned for its type), for a call's geometry and at most `max_blocks` blocks.
struct TableLayout {
  int64_t h, w, h_sources, w_sources, row_reach, stride_sum, block_partials, blocks_done;
  int64_t bytes;
};

template <typename Acc>
TableLayout table_layout(const LSConvGeometry& g, int64_t max_blocks) {
  int64_t end = 0;
  auto place = [&end](int64_t count, int64_t size) {
    const int64_t offset = (end + 15) / 16 * 16;
    end = offset + count * size;
    return offset;
  };
  TableLayout layout;
  layout.stride_sum = place(kGradientSums, sizeof(double));
  layout.h = place(g.kernel_h * g.out_h, sizeof(AxisSample<Acc>));
  layout.w = place(g.kernel_w * g.out_w, sizeof(AxisSample<Acc>));
  layout.block_partials = place(kGradientSums * max_blocks, sizeof(Acc));
  layout.h_sources = place(g.kernel_h * g.height, sizeof(IndexRange));
  layout.w_sources = place(g.kernel_w * g.width, sizeof(IndexRange));
  layout.row_reach = place(g.out_h, sizeof(IndexRange));
  layout.blocks_done = place(1, sizeof(unsigned int));
  layout.bytes = end;
  return layout;
}

// The tables in a buffer laid out by table_layout<Acc>.
template <typename Acc>
SamplingTables<Acc> tables_at(unsigned char* buffer, const TableLayout& layout) {
  return SamplingTables<Acc>{reinterpret_cast<AxisSample<Acc>*>(buffer + layout.h),
                             reinterpret_cast<AxisSample<Acc>*>(buffer + layout.w),
                             reinterpret_cast<IndexRange*>(buffer + layout.h_sources),
                             reinterpret_cast<IndexRange*>(buffer + layout.w_sources),
                             reinterpret_cast<IndexRange*>(buffer + layout.row_reach),
                             reinterpret_cast<double*>(buffer + layout.stride_sum),
                             reinterpret_cast<Acc*>(buffer + layout.block_partials),
                             reinterpret_cast<unsigned int*>(buffer + layout.blocks_done)};
}

// One thread per entry of the largest table (this kernel has no grid-stride loop).
inline int64_t table_blocks(const LSConvGeometry& g) {
  const int64_t entries = std::max({g.kernel_h * g.out_h, g.kernel_w * g.out_w,
                                    g.kernel_h * g.height, g.kernel_w * g.width, g.out_h,
                                    int64_t(1)});
  return (entries + kThreads - 1) / kThreads;
}

// The call's tables from stride[0..1] and phase[0..1] (float or double, on the device; the
// phase may be null).
template <typename S, typename Acc, typename Launch>
void launch_tables(Launch& launch, const S* stride, const S* phase, const LSConvGeometry& g,
                   const SamplingTables<Acc>& tables) {
  launch(KernelKind::kTables, 8, 0, table_blocks(g), ls_conv_tables_kernel<S, Acc>, stride,
         phase, g, tables);
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

// Every pixel of the images of `part` (the gather's launch size: which rows the tile
// reaches is known on the device only).
inline int64_t part_pixels(const LSConvGeometry& g, const ImageRows& part) {
  return (part.image_end - part.image_begin) * g.channels * g.height * g.width;
}

// What the backward of one tile computes, and how.
struct BackwardPlan {
  bool scatter_input;  // grad_input by atomicAdd in ls_conv_backward_kernel
  bool gather_input;   // grad_input by ls_conv_input_gradient_kernel: no atomics
  bool stride;         // the stride gradient
  bool phase;          // the phase gradient (with the stride's: one reduction)
  bool columns;        // the tile's columns, for the weight gradient
};

// The input gradient is gathered under deterministic mode (bitwise repeatable), scattered
// with atomics otherwise.
// The phase's gradient is reduced with the stride's (asked for alone, both are).
inline BackwardPlan plan_backward(bool input, bool stride, bool phase, bool columns,
                                  bool deterministic) {
  return BackwardPlan{input && !deterministic, input && deterministic, stride || phase, phase,
                      columns};
}

// im2col of one tile: columns <- samples of input.
template <typename T, typename Launch>
void launch_im2col_tile(Launch& launch, int multiprocessors, const T* input,
                        int64_t input_numel, const LSConvGeometry& g,
                        const SamplingTables<typename Accumulate<T>::type>& tables,
                        int64_t row_begin, int64_t row_end, T* columns) {
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  const int64_t blocks = grid_blocks(total, multiprocessors);
  if (fits_int32(input_numel, total, blocks, row_end)) {
    launch(KernelKind::kIm2col, 4, 0, blocks, ls_conv_im2col_kernel<T, int32_t>, input, tables,
           make_tile_index<int32_t>(g, row_begin, row_end), columns);
  } else {
    launch(KernelKind::kIm2col, 8, 0, blocks, ls_conv_im2col_kernel<T, int64_t>, input, tables,
           make_tile_index<int64_t>(g, row_begin, row_end), columns);
  }
}

namespace detail {

template <bool kValue>
using Flag = std::integral_constant<bool, kValue>;

// ls_conv_backward_kernel with the template flags of `plan` (scatter, stride, phase, columns).
template <typename T, typename Index, typename Launch, typename Acc>
void launch_backward_variant(Launch& launch, const BackwardPlan& plan, int64_t blocks,
                             const Acc* grad_columns, const T* input,
                             const SamplingTables<Acc>& tables, const TileIndex<Index>& tile,
                             Acc* grad_input, T* columns) {
  auto run = [&](auto input_flag, auto stride_flag, auto phase_flag, auto columns_flag) {
    constexpr bool kInput = decltype(input_flag)::value;
    constexpr bool kStride = decltype(stride_flag)::value;
    constexpr bool kPhase = decltype(phase_flag)::value;
    constexpr bool kColumns = decltype(columns_flag)::value;
    const int variant = (kInput ? kVariantInput : 0) | (kStride ? kVariantStride : 0) |
                        (kPhase ? kVariantPhase : 0) | (kColumns ? kVariantColumns : 0);
    launch(KernelKind::kBackward, int(sizeof(Index)), variant, blocks,
           ls_conv_backward_kernel<T, Index, kInput, kStride, kPhase, kColumns>, grad_columns,
           input, tables, tile, kInput ? grad_input : nullptr, kColumns ? columns : nullptr);
  };
  auto with_columns = [&](auto input_flag, auto stride_flag, auto phase_flag) {
    if (plan.columns) {
      run(input_flag, stride_flag, phase_flag, Flag<true>());
    } else {
      run(input_flag, stride_flag, phase_flag, Flag<false>());
    }
  };
  auto with_stride = [&](auto input_flag) {
    if (plan.phase) {
      with_columns(input_flag, Flag<true>(), Flag<true>());
    } else {
      with_columns(input_flag, Flag<true>(), Flag<false>());
    }
  };
  if (plan.scatter_input && plan.stride) {
    with_stride(Flag<true>());
  } else if (plan.scatter_input) {
    with_columns(Flag<true>(), Flag<false>(), Flag<false>());
  } else {  // the caller runs this kernel only for a scatter or the stride
    with_stride(Flag<false>());
  }
}

}  // namespace detail

// The backward sampling of one tile, as planned: the scatter/stride/columns pass (or im2col
// when only the columns are wanted; its last block adds the stride gradient to
// tables.stride_sum), then the gather of the input gradient over the images the tile
// covers.
template <typename T, typename Launch>
void launch_backward_tile(Launch& launch, int multiprocessors, const BackwardPlan& plan,
                          const typename Accumulate<T>::type* grad_columns, const T* input,
                          int64_t input_numel, const LSConvGeometry& g,
                          const SamplingTables<typename Accumulate<T>::type>& tables,
                          int64_t row_begin, int64_t row_end,
                          typename Accumulate<T>::type* grad_input, T* columns) {
  const int64_t total = tile_elements(g, row_begin, row_end);
  if (total == 0) return;
  const int64_t blocks = grid_blocks(total, multiprocessors);
  const bool small = fits_int32(input_numel, total, blocks, row_end);
  if (plan.scatter_input || plan.stride) {
    if (small) {
      detail::launch_backward_variant<T>(launch, plan, blocks, grad_columns, input, tables,
                                         make_tile_index<int32_t>(g, row_begin, row_end),
                                         grad_input, columns);
    } else {
      detail::launch_backward_variant<T>(launch, plan, blocks, grad_columns, input, tables,
                                         make_tile_index<int64_t>(g, row_begin, row_end),
                                         grad_input, columns);
    }
  } else if (plan.columns) {
    launch_im2col_tile(launch, multiprocessors, input, input_numel, g, tables, row_begin,
                       row_end, columns);
  }
  if (plan.gather_input) {
    ImageRows parts[3];
    const int count = tile_image_rows(g, row_begin, row_end, parts);
    for (int k = 0; k < count; ++k) {
      const int64_t pixels = part_pixels(g, parts[k]);
      if (pixels == 0) continue;
      const int64_t pixel_blocks = grid_blocks(pixels, multiprocessors);
      if (small && fits_int32(input_numel, pixels, pixel_blocks, row_end)) {
        launch(KernelKind::kInputGradient, 4, 0, pixel_blocks,
               ls_conv_input_gradient_kernel<T, int32_t>, grad_columns, tables,
               make_tile_index<int32_t>(g, row_begin, row_end), parts[k], grad_input);
      } else {
        launch(KernelKind::kInputGradient, 8, 0, pixel_blocks,
               ls_conv_input_gradient_kernel<T, int64_t>, grad_columns, tables,
               make_tile_index<int64_t>(g, row_begin, row_end), parts[k], grad_input);
      }
    }
  }
}

// Whether 32-bit indices address every element a fused launch touches: its tensors (input,
// output or grad_output, the weight gradient's partials), its pixels and blocks.
inline bool fused_fits_int32(int64_t input_numel, int64_t output_numel, int64_t partial_numel,
                             int64_t pixels, int64_t blocks) {
  const int64_t largest =
      std::max({input_numel, output_numel, partial_numel, pixels + kTileN, blocks});
  return largest <= int64_t(std::numeric_limits<int32_t>::max());
}

// The forward of the batch by the fused sampling GEMM (float16, bfloat16 from sm_80, float64:
// see ls_conv_fused_dtype in the launchers): weight (out_channels, C / groups * kernel_h *
// kernel_w), bias null or (out_channels), output (batch, out_channels, out_h, out_w).
template <typename T, typename Launch>
void launch_forward_fused(Launch& launch, const T* input, int64_t input_numel, const T* weight,
                          const T* bias, const LSConvGeometry& g, int64_t batch,
                          int64_t out_channels, int64_t groups,
                          const SamplingTables<typename Accumulate<T>::type>& tables, T* output) {
  const int64_t pixels = batch * g.out_h * g.out_w;
  if (pixels == 0 || out_channels == 0) return;
  const int64_t tiles_m = (out_channels / groups + kTileM - 1) / kTileM;
  const int64_t blocks = groups * tiles_m * ((pixels + kTileN - 1) / kTileN);
  if (fused_fits_int32(input_numel, pixels * out_channels, 0, pixels, blocks)) {
    launch(KernelKind::kForwardFused, 4, 0, blocks, ls_conv_forward_fused_kernel<T, int32_t>,
           input, weight, bias, tables,
           make_fused_index<int32_t>(g, batch, out_channels, groups, pixels), output);
  } else {
    launch(KernelKind::kForwardFused, 8, 0, blocks, ls_conv_forward_fused_kernel<T, int64_t>,
           input, weight, bias, tables,
           make_fused_index<int64_t>(g, batch, out_channels, groups, pixels), output);
  }
}

// Output pixels per split of the weight gradient at least (a block's partial product is
// written once per split: fewer pixels would make those writes the larger traffic).
constexpr int64_t kMinSplitPixels = 512;
// Blocks per multiprocessor that the splits aim for (256 threads and about 34 KiB of shared
// memory each).
constexpr int64_t kFusedBlocksPerMultiprocessor = 4;

// How the weight gradient splits the batch's output pixels among blocks: `splits` runs of
// `chunk` pixels (a multiple of the reduction step; the last run shorter).
struct PixelSplit {
  int64_t splits, chunk;
};

inline PixelSplit weight_gradient_split(const LSConvGeometry& g, int64_t batch,
                                        int64_t out_channels, int64_t groups, int element_bytes,
                                        int multiprocessors) {
  const int64_t pixels = batch * g.out_h * g.out_w;
  const int64_t step = element_bytes == 8 ? tile_k<double>() : tile_k<float>();
  if (pixels == 0) return PixelSplit{1, step};
  const int64_t reduction = g.channels / groups * g.kernel_h * g.kernel_w;
  const int64_t tiles = groups * ((out_channels / groups + kTileM - 1) / kTileM) *
                        ((reduction + kTileN - 1) / kTileN);
  const int64_t wanted = int64_t(multiprocessors) * kFusedBlocksPerMultiprocessor;
  int64_t splits = std::max<int64_t>(1, (wanted + tiles - 1) / tiles);
  splits = std::min(splits, std::max<int64_t>(1, pixels / kMinSplitPixels));
  int64_t chunk = (pixels + splits - 1) / splits;
  chunk = (chunk + step - 1) / step * step;
  return PixelSplit{(pixels + chunk - 1) / chunk, chunk};
}

// The weight gradient's partial products by the fused sampling GEMM: partial (split.splits,
// out_channels, C / groups * kernel_h * kernel_w) in Accumulate<T>::type, every element
// written; the caller sums the splits.
template <typename T, typename Launch>
void launch_weight_gradient_fused(Launch& launch, const T* grad_output, const T* input,
                                  int64_t input_numel, const LSConvGeometry& g, int64_t batch,
                                  int64_t out_channels, int64_t groups, const PixelSplit& split,
                                  const SamplingTables<typename Accumulate<T>::type>& tables,
                                  typename Accumulate<T>::type* partial) {
  const int64_t pixels = batch * g.out_h * g.out_w;
  const int64_t reduction = g.channels / groups * g.kernel_h * g.kernel_w;
  if (out_channels == 0 || reduction == 0) return;
  const int64_t tiles_m = (out_channels / groups + kTileM - 1) / kTileM;
  const int64_t blocks =
      split.splits * groups * tiles_m * ((reduction + kTileN - 1) / kTileN);
  const int64_t partial_numel = split.splits * out_channels * reduction;
  if (fused_fits_int32(input_numel, pixels * out_channels, partial_numel,
                       split.splits * split.chunk, blocks)) {
    launch(KernelKind::kWeightGradientFused, 4, 0, blocks,
           ls_conv_weight_gradient_fused_kernel<T, int32_t>, grad_output, input, tables,
           make_fused_index<int32_t>(g, batch, out_channels, groups, reduction),
           int32_t(split.chunk), int32_t(groups), partial);
  } else {
    launch(KernelKind::kWeightGradientFused, 8, 0, blocks,
           ls_conv_weight_gradient_fused_kernel<T, int64_t>, grad_output, input, tables,
           make_fused_index<int64_t>(g, batch, out_channels, groups, reduction),
           int64_t(split.chunk), int64_t(groups), partial);
  }
}

}  // namespace cuda
}  // namespace mmlstride

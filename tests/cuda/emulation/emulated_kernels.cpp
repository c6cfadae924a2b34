// C entry points that run the CUDA kernels of csrc/common/cuda on the CPU
// through cuda_emulation.h, for tests/cuda/test_cuda_kernels_emulated.py (ctypes):
// each kernel alone (after the sampling tables, made by their kernel from the stride),
// and the launch layer (ls_conv_cuda_launch.cuh) for a call, recording what it launched,
// the fused sampling GEMMs (ls_conv_cuda_fused.cuh) among them.
//
// dtype: 0 float, 1 double, 2 half, 3 bfloat16; index64: 0 int32_t, 1 int64_t.
// geometry: channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
// dilation_h, dilation_w, out_h, out_w; stride: stride_h, stride_w, and phase: phase_h,
// phase_w or null (on the "device"); stride_sum: the gradients of (stride_h, stride_w,
// phase_h, phase_w).
#include "cuda_emulation.h"
// clang-format off (the stand-in must come first)
#include "common/cuda/ls_conv_cuda_fused.cuh"
#include "common/cuda/ls_conv_cuda_kernel.cuh"
#include "common/cuda/ls_conv_cuda_launch.cuh"
// clang-format on

#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

using mmlstride::LSConvGeometry;
namespace cuda = mmlstride::cuda;

LSConvGeometry make_geometry(const int64_t* v) {
  return LSConvGeometry{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]};
}

// The launch policy of ls_conv_cuda_launch.cuh on the emulation: runs each launch and
// records it as (kind, index bytes, variant, blocks).
struct RecordingLaunch {
  int64_t* record = nullptr;
  int capacity = 0;
  int count = 0;

  template <typename Kernel, typename... Args>
  void operator()(cuda::KernelKind kind, int index_bytes, int variant, int64_t blocks,
                  Kernel kernel, Args... args) {
    if (count < capacity) {
      int64_t* entry = record + 4 * count;
      entry[0] = int64_t(kind);
      entry[1] = index_bytes;
      entry[2] = variant;
      entry[3] = blocks;
    }
    ++count;
    emulated_launch(unsigned(blocks), cuda::kThreads, kernel, args...);
  }
};

// A call's sampling tables, made on the emulation from `stride` and `phase` (S: float or
// double; the phase may be null) by ls_conv_tables_kernel, with scratch for `max_blocks`
// backward blocks.
template <typename Acc>
struct Tables {
  std::vector<double> storage;  // 8-byte aligned (table_layout aligns within it to 16)
  cuda::SamplingTables<Acc> tables;

  template <typename S>
  Tables(const S* stride, const S* phase, const LSConvGeometry& g, int64_t max_blocks,
         RecordingLaunch& launch) {
    const cuda::TableLayout layout = cuda::table_layout<Acc>(g, max_blocks);
    storage.assign(layout.bytes / 8 + 2, 0.0);
    auto* base = reinterpret_cast<unsigned char*>(storage.data());
    base += (16 - reinterpret_cast<uintptr_t>(base) % 16) % 16;
    tables = cuda::tables_at<Acc>(base, layout);
    cuda::launch_tables(launch, stride, phase, g, tables);
  }
};

template <typename Function>
int dispatch_type(int dtype, Function&& function) {
  switch (dtype) {
    case 0: return function(float());
    case 1: return function(double());
    case 2: return function(__half());
    case 3: return function(__nv_bfloat16());
  }
  return -1;
}

template <typename Function>
int dispatch(int dtype, int index64, Function&& function) {
  return dispatch_type(dtype, [&](auto type_tag) {
    return index64 ? function(type_tag, int64_t()) : function(type_tag, int32_t());
  });
}

template <bool kValue>
using Flag = std::integral_constant<bool, kValue>;

// ls_conv_backward_kernel with the flags given as bits (input 1, stride 2, columns 4,
// phase 8: with the stride).
template <typename T, typename Index, typename Acc>
int backward_variant(int flags, const Acc* grad_columns, const T* input,
                     const cuda::SamplingTables<Acc>& tables, const cuda::TileIndex<Index>& tile,
                     Acc* grad_input, T* columns, unsigned blocks) {
  auto run = [&](auto input_flag, auto stride_flag, auto phase_flag, auto columns_flag) {
    emulated_launch(blocks, cuda::kThreads,
                    cuda::ls_conv_backward_kernel<T, Index, decltype(input_flag)::value,
                                                  decltype(stride_flag)::value,
                                                  decltype(phase_flag)::value,
                                                  decltype(columns_flag)::value>,
                    grad_columns, input, tables, tile, grad_input, columns);
    return 0;
  };
  switch (flags) {
    case 1: return run(Flag<true>(), Flag<false>(), Flag<false>(), Flag<false>());
    case 2: return run(Flag<false>(), Flag<true>(), Flag<false>(), Flag<false>());
    case 3: return run(Flag<true>(), Flag<true>(), Flag<false>(), Flag<false>());
    case 5: return run(Flag<true>(), Flag<false>(), Flag<false>(), Flag<true>());
    case 6: return run(Flag<false>(), Flag<true>(), Flag<false>(), Flag<true>());
    case 7: return run(Flag<true>(), Flag<true>(), Flag<false>(), Flag<true>());
    case 10: return run(Flag<false>(), Flag<true>(), Flag<true>(), Flag<false>());
    case 11: return run(Flag<true>(), Flag<true>(), Flag<true>(), Flag<false>());
    case 14: return run(Flag<false>(), Flag<true>(), Flag<true>(), Flag<true>());
    case 15: return run(Flag<true>(), Flag<true>(), Flag<true>(), Flag<true>());
  }
  return -1;
}

// Test-only: sum_block_partials run by one block.
template <typename Acc>
__global__ void sum_partials_kernel(const Acc* partials, int64_t blocks, double* stride_sum) {
  cuda::sum_block_partials(partials, blocks, stride_sum);
}

}  // namespace

// The schedule of the following launches: the seed of their block orders and thread
// interleavings, and the worker threads that run blocks at once.
extern "C" void emulated_schedule(unsigned seed, int workers) {
  emulation::schedule(seed, workers);
}

extern "C" int emulated_im2col(int dtype, int index64, const void* input,
                               const int64_t* geometry, const double* stride,
                               const double* phase, int64_t row_begin,
                               int64_t row_end, void* columns, unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    using T = decltype(type_tag);
    using Index = decltype(index_tag);
    RecordingLaunch launch;
    const Tables<typename cuda::Accumulate<T>::type> t(stride, phase, g, blocks, launch);
    emulated_launch(blocks, cuda::kThreads, cuda::ls_conv_im2col_kernel<T, Index>,
                    static_cast<const T*>(input), t.tables,
                    cuda::make_tile_index<Index>(g, row_begin, row_end), static_cast<T*>(columns));
    return 0;
  });
}

// Runs the gather of the input gradient over the tile's image parts.
extern "C" int emulated_input_gradient(int dtype, int index64, const void* grad_columns,
                                       const int64_t* geometry, const double* stride,
                                       const double* phase, int64_t row_begin, int64_t row_end,
                                       void* grad_input,
                                       unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    using T = decltype(type_tag);
    using Index = decltype(index_tag);
    using Acc = typename cuda::Accumulate<T>::type;
    RecordingLaunch launch;
    const Tables<Acc> t(stride, phase, g, blocks, launch);
    cuda::ImageRows parts[3];
    const int count = cuda::tile_image_rows(g, row_begin, row_end, parts);
    for (int k = 0; k < count; ++k) {
      emulated_launch(blocks, cuda::kThreads, cuda::ls_conv_input_gradient_kernel<T, Index>,
                      static_cast<const Acc*>(grad_columns), t.tables,
                      cuda::make_tile_index<Index>(g, row_begin, row_end), parts[k],
                      static_cast<Acc*>(grad_input));
    }
    return 0;
  });
}

// The backward kernel with flags (bit 0 input gradient, bit 1 stride, bit 2 columns, bit 3
// phase); the stride and phase gradients its last block sums go to stride_sum[0..3].
extern "C" int emulated_backward(int dtype, int index64, int flags, const void* grad_columns,
                                 const void* input, const int64_t* geometry, const double* stride,
                                 const double* phase, int64_t row_begin, int64_t row_end,
                                 void* grad_input,
                                 double* stride_sum, void* columns, unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    using T = decltype(type_tag);
    using Index = decltype(index_tag);
    using Acc = typename cuda::Accumulate<T>::type;
    RecordingLaunch launch;
    const Tables<Acc> t(stride, phase, g, blocks, launch);
    const int status = backward_variant<T, Index, Acc>(
        flags, static_cast<const Acc*>(grad_columns), static_cast<const T*>(input), t.tables,
        cuda::make_tile_index<Index>(g, row_begin, row_end), static_cast<Acc*>(grad_input),
        static_cast<T*>(columns), blocks);
    for (int k = 0; k < cuda::kGradientSums; ++k) stride_sum[k] = t.tables.stride_sum[k];
    return status ? status : int(*t.tables.blocks_done);  // 0: re-armed for the next tile
  });
}

// stride_sum[k] += the sum of partials[kGradientSums * block + k] over `blocks` (dtype 0 float,
// 1 double), by sum_block_partials.
extern "C" int emulated_sum_partials(int dtype, const void* partials, int64_t blocks,
                                     double* stride_sum) {
  if (dtype == 0) {
    emulated_launch(1, cuda::kThreads, sum_partials_kernel<float>,
                    static_cast<const float*>(partials), blocks, stride_sum);
  } else if (dtype == 1) {
    emulated_launch(1, cuda::kThreads, sum_partials_kernel<double>,
                    static_cast<const double*>(partials), blocks, stride_sum);
  } else {
    return -1;
  }
  return 0;
}

// The tables kernel for a stride and phase (or null) of dtype stride_dtype (0 float, 1 double)
// and tables in
// float (acc_dtype 0) or double (1). Writes the h and w samples' neighbours and weights
// (low, high, weight_low, weight_high per entry) and the sources and reach ranges (begin,
// end per entry) to the arrays given, and returns 1 when the kernel's device-side
// assertion fired, 0 otherwise.
extern "C" int emulated_tables(int acc_dtype, int stride_dtype, const void* stride,
                               const void* phase, const int64_t* geometry, double* h, double* w,
                               int64_t* h_sources, int64_t* w_sources, int64_t* row_reach) {
  const LSConvGeometry g = make_geometry(geometry);
  emulation::assertion = nullptr;
  auto copy_samples = [](const auto* samples, int64_t count, double* out) {
    for (int64_t k = 0; k < count; ++k) {
      out[4 * k] = samples[k].low;
      out[4 * k + 1] = samples[k].high;
      out[4 * k + 2] = double(samples[k].weight_low);
      out[4 * k + 3] = double(samples[k].weight_high);
    }
  };
  auto copy_ranges = [](const cuda::IndexRange* ranges, int64_t count, int64_t* out) {
    for (int64_t k = 0; k < count; ++k) {
      out[2 * k] = ranges[k].begin;
      out[2 * k + 1] = ranges[k].end;
    }
  };
  auto run = [&](auto acc_tag, const auto* typed_stride) {
    using Acc = decltype(acc_tag);
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(typed_stride)>>;
    RecordingLaunch launch;
    const Tables<Acc> t(typed_stride, static_cast<const S*>(phase), g, 1, launch);
    copy_samples(t.tables.h, g.kernel_h * g.out_h, h);
    copy_samples(t.tables.w, g.kernel_w * g.out_w, w);
    copy_ranges(t.tables.h_sources, g.kernel_h * g.height, h_sources);
    copy_ranges(t.tables.w_sources, g.kernel_w * g.width, w_sources);
    copy_ranges(t.tables.row_reach, g.out_h, row_reach);
    return emulation::assertion.load() != nullptr ? 1 : 0;
  };
  auto with_stride = [&](auto acc_tag) {
    return stride_dtype == 0 ? run(acc_tag, static_cast<const float*>(stride))
                             : run(acc_tag, static_cast<const double*>(stride));
  };
  return acc_dtype == 0 ? with_stride(float()) : with_stride(double());
}

// n / d by FastDivider (index64: 64-bit), for n >= 0 and d >= 1.
extern "C" int64_t emulated_fast_divide(int index64, int64_t n, int64_t d) {
  if (index64) return cuda::FastDivider<int64_t>(d).divide(n);
  return cuda::FastDivider<int32_t>(int32_t(d)).divide(int32_t(n));
}

extern "C" int emulated_fits_int32(int64_t input_numel, int64_t total, int64_t blocks,
                                   int64_t row_end) {
  return cuda::fits_int32(input_numel, total, blocks, row_end);
}

extern "C" int64_t emulated_grid_blocks(int64_t total, int multiprocessors) {
  return cuda::grid_blocks(total, multiprocessors);
}

// The launch layer for one call: the tables from `stride`, then the backward of the rows
// [row_begin, row_end) as `tiles` consecutive tiles of (row_end - row_begin) / tiles rows,
// the last one taking the rest (want: bit 0 input gradient, bit 1 stride, bit 2 columns,
// bit 3 phase). input_numel is what
// the index-width choice is told (a tensor larger than the one given makes it pick 64-bit
// indices). stride_sum[0..3] gets the stride and phase gradients. Returns the number of launches,
// recorded in record[4 * k ...] for k < capacity.
extern "C" int emulated_backward_tile(int dtype, int want, int deterministic, int multiprocessors,
                                      const void* grad_columns, const void* input,
                                      int64_t input_numel, const int64_t* geometry,
                                      const double* stride, const double* phase,
                                      int64_t row_begin, int64_t row_end, int tiles, void* grad_input, double* stride_sum,
                                      void* columns, int64_t* record, int capacity) {
  const LSConvGeometry g = make_geometry(geometry);
  const cuda::BackwardPlan plan =
      cuda::plan_backward(want & 1, want & 2, want & 8, want & 4, deterministic != 0);
  RecordingLaunch launch{record, capacity};
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    using Acc = typename cuda::Accumulate<T>::type;
    const Tables<Acc> t(stride, phase, g, cuda::max_grid_blocks(multiprocessors), launch);
    // Each tile's columns and their gradient start at element 0 of their buffers, as
    // the host code's tile buffers do.
    const int64_t step = (row_end - row_begin) / tiles;
    for (int k = 0; k < tiles; ++k) {
      const int64_t begin = row_begin + k * step;
      const int64_t end = k == tiles - 1 ? row_end : begin + step;
      const int64_t offset = cuda::tile_elements(g, row_begin, begin);
      cuda::launch_backward_tile(
          launch, multiprocessors, plan, static_cast<const Acc*>(grad_columns) + offset,
          static_cast<const T*>(input), input_numel, g, t.tables, begin, end,
          static_cast<Acc*>(grad_input), columns ? static_cast<T*>(columns) + offset : nullptr);
    }
    for (int k = 0; k < cuda::kGradientSums; ++k) stride_sum[k] = t.tables.stride_sum[k];
    return 0;
  });
  return status ? status : launch.count;
}

// The launch layer's tables and im2col of one tile; returns the launches as
// emulated_backward_tile.
extern "C" int emulated_im2col_tile(int dtype, int multiprocessors, const void* input,
                                    int64_t input_numel, const int64_t* geometry,
                                    const double* stride, const double* phase,
                                    int64_t row_begin, int64_t row_end, void* columns,
                                    int64_t* record, int capacity) {
  const LSConvGeometry g = make_geometry(geometry);
  RecordingLaunch launch{record, capacity};
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const Tables<typename cuda::Accumulate<T>::type> t(
        stride, phase, g, cuda::max_grid_blocks(multiprocessors), launch);
    cuda::launch_im2col_tile(launch, multiprocessors, static_cast<const T*>(input), input_numel,
                             g, t.tables, row_begin, row_end, static_cast<T*>(columns));
    return 0;
  });
  return status ? status : launch.count;
}

// The launch layer's tables and fused forward of a batch: input (batch, C, H, W), weight
// (out_channels, C / groups, kernel_h, kernel_w), bias or null, output (batch, out_channels,
// out_h, out_w). Returns the launches as emulated_backward_tile, or -2 when a device-side
// precondition (the warp matrix functions') was violated.
extern "C" int emulated_forward_fused(int dtype, int multiprocessors, const void* input,
                                      int64_t input_numel, const void* weight, const void* bias,
                                      const int64_t* geometry, int64_t batch,
                                      int64_t out_channels, int64_t groups, const double* stride,
                                      const double* phase, void* output, int64_t* record,
                                      int capacity) {
  const LSConvGeometry g = make_geometry(geometry);
  RecordingLaunch launch{record, capacity};
  emulation::assertion = nullptr;
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const Tables<typename cuda::Accumulate<T>::type> t(
        stride, phase, g, cuda::max_grid_blocks(multiprocessors), launch);
    cuda::launch_forward_fused(launch, static_cast<const T*>(input), input_numel,
                               static_cast<const T*>(weight), static_cast<const T*>(bias), g,
                               batch, out_channels, groups, t.tables, static_cast<T*>(output));
    return 0;
  });
  if (emulation::assertion.load() != nullptr) return -2;
  return status ? status : launch.count;
}

// The weight gradient's split of the pixels (weight_gradient_split): split[0] runs of
// split[1] pixels.
extern "C" void emulated_weight_gradient_split(const int64_t* geometry, int64_t batch,
                                               int64_t out_channels, int64_t groups,
                                               int element_bytes, int multiprocessors,
                                               int64_t* split) {
  const cuda::PixelSplit s = cuda::weight_gradient_split(
      make_geometry(geometry), batch, out_channels, groups, element_bytes, multiprocessors);
  split[0] = s.splits;
  split[1] = s.chunk;
}

// The launch layer's tables and fused weight gradient: partial (splits, out_channels,
// C / groups * kernel_h * kernel_w) in the accumulation dtype, for the split of
// emulated_weight_gradient_split. Returns the launches, or -2 as emulated_forward_fused.
extern "C" int emulated_weight_gradient_fused(int dtype, int multiprocessors,
                                              const void* grad_output, const void* input,
                                              int64_t input_numel, const int64_t* geometry,
                                              int64_t batch, int64_t out_channels, int64_t groups,
                                              const double* stride, const double* phase,
                                              void* partial, int64_t* record, int capacity) {
  const LSConvGeometry g = make_geometry(geometry);
  RecordingLaunch launch{record, capacity};
  emulation::assertion = nullptr;
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    using Acc = typename cuda::Accumulate<T>::type;
    const Tables<Acc> t(stride, phase, g, cuda::max_grid_blocks(multiprocessors), launch);
    const cuda::PixelSplit split = cuda::weight_gradient_split(
        g, batch, out_channels, groups, int(sizeof(T)), multiprocessors);
    cuda::launch_weight_gradient_fused(launch, static_cast<const T*>(grad_output),
                                       static_cast<const T*>(input), input_numel, g, batch,
                                       out_channels, groups, split, t.tables,
                                       static_cast<Acc*>(partial));
    return 0;
  });
  if (emulation::assertion.load() != nullptr) return -2;
  return status ? status : launch.count;
}

// C entry points that run the CUDA kernels of csrc/common/cuda on the CPU
// through cuda_emulation.h, for tests/test_cuda_kernels_emulated.py (ctypes):
// each kernel alone, and the launch layer (ls_conv_cuda_launch.cuh) for a tile,
// recording what it launched.
//
// dtype: 0 float, 1 double, 2 half, 3 bfloat16; index64: 0 int32_t, 1 int64_t.
// geometry: channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
// dilation_h, dilation_w, out_h, out_w; stride: stride_h, stride_w.
#include "cuda_emulation.h"
// clang-format off (the stand-in must come first)
#include "common/cuda/ls_conv_cuda_kernel.cuh"
#include "common/cuda/ls_conv_cuda_launch.cuh"
// clang-format on

#include <cstdint>

namespace {

using mmlstride::LSConvGeometry;
namespace cuda = mmlstride::cuda;

LSConvGeometry make_geometry(const int64_t* v, const double* stride) {
  return LSConvGeometry{v[0], v[1], v[2], v[3], v[4],      v[5],     v[6],
                        v[7], v[8], v[9], v[10], stride[0], stride[1]};
}

template <typename T, typename Index>
void im2col(const void* input, const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
            void* columns, unsigned blocks) {
  emulated_launch(blocks, cuda::kThreads, cuda::ls_conv_im2col_kernel<T, Index>,
                  static_cast<const T*>(input), g, Index(row_begin), Index(row_end),
                  static_cast<T*>(columns));
}

template <typename T, typename Index, bool kInput, bool kStride, bool kColumns>
void backward(const void* grad_columns, const void* input, const LSConvGeometry& g,
              int64_t row_begin, int64_t row_end, void* grad_input, void* block_partials,
              void* columns, unsigned blocks) {
  using Acc = typename cuda::Accumulate<T>::type;
  emulated_launch(blocks, cuda::kThreads,
                  cuda::ls_conv_backward_kernel<T, Index, kInput, kStride, kColumns>,
                  static_cast<const Acc*>(grad_columns), static_cast<const T*>(input), g,
                  Index(row_begin), Index(row_end), static_cast<Acc*>(grad_input),
                  static_cast<Acc*>(block_partials), static_cast<T*>(columns));
}

template <typename T, typename Index>
void input_gradient(const void* grad_columns, const LSConvGeometry& g, int64_t row_begin,
                    int64_t row_end, void* grad_input, unsigned blocks) {
  using Acc = typename cuda::Accumulate<T>::type;
  cuda::PixelBox boxes[3];
  const int count = cuda::reachable_pixel_boxes(g, row_begin, row_end, boxes);
  for (int k = 0; k < count; ++k) {
    emulated_launch(blocks, cuda::kThreads, cuda::ls_conv_input_gradient_kernel<T, Index>,
                    static_cast<const Acc*>(grad_columns), g, Index(row_begin), Index(row_end),
                    boxes[k], static_cast<Acc*>(grad_input));
  }
}

template <typename T, typename Index>
int backward_variant(int flags, const void* grad_columns, const void* input,
                     const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                     void* grad_input, void* block_partials, void* columns, unsigned blocks) {
#define LSCONV_CASE(flags_value, kInput, kStride, kColumns)                                      \
  case flags_value:                                                                              \
    backward<T, Index, kInput, kStride, kColumns>(grad_columns, input, g, row_begin, row_end,   \
                                                  grad_input, block_partials, columns, blocks); \
    return 0;
  switch (flags) {  // bit 0: input gradient, bit 1: stride partials, bit 2: columns
    LSCONV_CASE(1, true, false, false)
    LSCONV_CASE(2, false, true, false)
    LSCONV_CASE(3, true, true, false)
    LSCONV_CASE(5, true, false, true)
    LSCONV_CASE(6, false, true, true)
    LSCONV_CASE(7, true, true, true)
  }
#undef LSCONV_CASE
  return -1;
}

// The launch policy of ls_conv_cuda_launch.cuh on the emulation: runs each launch and
// records it as (kind, index bytes, variant, blocks).
struct RecordingLaunch {
  int64_t* record;
  int capacity;
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

}  // namespace

extern "C" int emulated_im2col(int dtype, int index64, const void* input,
                               const int64_t* geometry, const double* stride, int64_t row_begin,
                               int64_t row_end, void* columns, unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry, stride);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    im2col<decltype(type_tag), decltype(index_tag)>(input, g, row_begin, row_end, columns,
                                                    blocks);
    return 0;
  });
}

extern "C" int emulated_input_gradient(int dtype, int index64, const void* grad_columns,
                                       const int64_t* geometry, const double* stride,
                                       int64_t row_begin, int64_t row_end, void* grad_input,
                                       unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry, stride);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    input_gradient<decltype(type_tag), decltype(index_tag)>(grad_columns, g, row_begin, row_end,
                                                            grad_input, blocks);
    return 0;
  });
}

extern "C" int emulated_backward(int dtype, int index64, int flags, const void* grad_columns,
                                 const void* input, const int64_t* geometry, const double* stride,
                                 int64_t row_begin, int64_t row_end, void* grad_input,
                                 void* block_partials, void* columns, unsigned blocks) {
  const LSConvGeometry g = make_geometry(geometry, stride);
  return dispatch(dtype, index64, [&](auto type_tag, auto index_tag) {
    return backward_variant<decltype(type_tag), decltype(index_tag)>(
        flags, grad_columns, input, g, row_begin, row_end, grad_input, block_partials, columns,
        blocks);
  });
}

// stride_sum[k] += the sum of partials[2 * block + k] over `blocks` (dtype 0 float, 1 double),
// by ls_conv_sum_partials_kernel.
extern "C" int emulated_sum_partials(int dtype, const void* partials, int64_t blocks,
                                     double* stride_sum) {
  if (dtype == 0) {
    emulated_launch(1, cuda::kThreads, cuda::ls_conv_sum_partials_kernel<float>,
                    static_cast<const float*>(partials), blocks, stride_sum);
  } else if (dtype == 1) {
    emulated_launch(1, cuda::kThreads, cuda::ls_conv_sum_partials_kernel<double>,
                    static_cast<const double*>(partials), blocks, stride_sum);
  } else {
    return -1;
  }
  return 0;
}

extern "C" int emulated_fits_int32(int64_t input_numel, int64_t total, int64_t blocks,
                                   int64_t row_end) {
  return cuda::fits_int32(input_numel, total, blocks, row_end);
}

extern "C" int64_t emulated_grid_blocks(int64_t total, int multiprocessors) {
  return cuda::grid_blocks(total, multiprocessors);
}

// The launch layer's backward of one tile. want: bit 0 input gradient, bit 1 stride,
// bit 2 columns. input_numel is what the index-width choice is told (a tensor larger
// than the one given makes it pick 64-bit indices). Returns the number of launches,
// recorded in record[4 * k ...] for k < capacity.
extern "C" int emulated_backward_tile(int dtype, int want, int deterministic, int multiprocessors,
                                      const void* grad_columns, const void* input,
                                      int64_t input_numel, const int64_t* geometry,
                                      const double* stride, int64_t row_begin, int64_t row_end,
                                      void* grad_input, void* block_partials, double* stride_sum,
                                      void* columns, int64_t* record, int capacity) {
  const LSConvGeometry g = make_geometry(geometry, stride);
  const cuda::BackwardPlan plan =
      cuda::plan_backward(want & 1, want & 2, want & 4, deterministic != 0);
  RecordingLaunch launch{record, capacity};
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    using Acc = typename cuda::Accumulate<T>::type;
    cuda::launch_backward_tile(launch, multiprocessors, plan,
                               static_cast<const Acc*>(grad_columns),
                               static_cast<const T*>(input), input_numel, g, row_begin, row_end,
                               static_cast<Acc*>(grad_input), static_cast<Acc*>(block_partials),
                               stride_sum, static_cast<T*>(columns));
    return 0;
  });
  return status ? status : launch.count;
}

// The launch layer's im2col of one tile; returns the launches as emulated_backward_tile.
extern "C" int emulated_im2col_tile(int dtype, int multiprocessors, const void* input,
                                    int64_t input_numel, const int64_t* geometry,
                                    const double* stride, int64_t row_begin, int64_t row_end,
                                    void* columns, int64_t* record, int capacity) {
  const LSConvGeometry g = make_geometry(geometry, stride);
  RecordingLaunch launch{record, capacity};
  const int status = dispatch_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    cuda::launch_im2col_tile(launch, multiprocessors, static_cast<const T*>(input), input_numel,
                             g, row_begin, row_end, static_cast<T*>(columns));
    return 0;
  });
  return status ? status : launch.count;
}

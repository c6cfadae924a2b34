// Instantiates every CUDA kernel of csrc/common/cuda for every dtype and index
// type the launchers use, so that nvcc checks them on machines without a GPU or
// a CUDA build of torch (tests/cuda/test_cuda_kernels_compile.py: compiled, and read as PTX).
#include "common/cuda/ls_conv_cuda_fused.cuh"
#include "common/cuda/ls_conv_cuda_kernel.cuh"

namespace mmlstride {
namespace cuda {

#define LSCONV_INSTANTIATE_BACKWARD(T, Index, kInput, kStride, kPhase, kColumns)                 \
  template __global__ void ls_conv_backward_kernel<T, Index, kInput, kStride, kPhase, kColumns>( \
      const typename Accumulate<T>::type*, const T*,                                      \
      SamplingTables<typename Accumulate<T>::type>, TileIndex<Index>,                     \
      typename Accumulate<T>::type*, T*);

#define LSCONV_INSTANTIATE_INDEX(T, Index)                                                 \
  template __global__ void ls_conv_forward_fused_kernel<T, Index>(                         \
      const T*, const T*, const T*, SamplingTables<typename Accumulate<T>::type>,          \
      FusedIndex<Index>, T*);                                                              \
  template __global__ void ls_conv_weight_gradient_fused_kernel<T, Index>(                 \
      const T*, const T*, SamplingTables<typename Accumulate<T>::type>, FusedIndex<Index>, \
      Index, Index, typename Accumulate<T>::type*);                                        \
  template __global__ void ls_conv_im2col_kernel<T, Index>(                                \
      const T*, SamplingTables<typename Accumulate<T>::type>, TileIndex<Index>, T*);       \
  template __global__ void ls_conv_input_gradient_kernel<T, Index>(                        \
      const typename Accumulate<T>::type*, SamplingTables<typename Accumulate<T>::type>,   \
      TileIndex<Index>, ImageRows, typename Accumulate<T>::type*);                         \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, true, true)                            \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, true, false)                           \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, false, true)                           \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, false, false)                          \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, false, false, true)                          \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, false, false, false)                         \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, true, true)                           \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, true, false)                          \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, false, true)                          \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, false, false)

#define LSCONV_INSTANTIATE(T)          \
  LSCONV_INSTANTIATE_INDEX(T, int32_t) \
  LSCONV_INSTANTIATE_INDEX(T, int64_t)

#define LSCONV_INSTANTIATE_TABLES(S, Acc) \
  template __global__ void ls_conv_tables_kernel<S, Acc>(const S*, const S*, LSConvGeometry, \
                                                         SamplingTables<Acc>);

LSCONV_INSTANTIATE_TABLES(float, float)
LSCONV_INSTANTIATE_TABLES(double, float)
LSCONV_INSTANTIATE_TABLES(float, double)
LSCONV_INSTANTIATE_TABLES(double, double)

LSCONV_INSTANTIATE(float)
LSCONV_INSTANTIATE(double)
LSCONV_INSTANTIATE(__half)
LSCONV_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace mmlstride

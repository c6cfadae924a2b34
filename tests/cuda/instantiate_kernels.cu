// Instantiates every CUDA kernel of csrc/common/cuda for every dtype and index
// type the launchers use, so that nvcc checks them on machines without a GPU or
// a CUDA build of torch (tests/test_cuda_kernels_compile.py).
#include "common/cuda/ls_conv_cuda_kernel.cuh"

namespace mmlstride {
namespace cuda {

#define LSCONV_INSTANTIATE_BACKWARD(T, Index, kInput, kStride, kColumns)                 \
  template __global__ void ls_conv_backward_kernel<T, Index, kInput, kStride, kColumns>( \
      const typename Accumulate<T>::type*, const T*, LSConvGeometry, Index, Index,        \
      typename Accumulate<T>::type*, typename Accumulate<T>::type*, T*);

#define LSCONV_INSTANTIATE_INDEX(T, Index)                                                    \
  template __global__ void ls_conv_im2col_kernel<T, Index>(const T*, LSConvGeometry, Index, \
                                                           Index, T*);                        \
  template __global__ void ls_conv_input_gradient_kernel<T, Index>(                           \
      const typename Accumulate<T>::type*, LSConvGeometry, Index, Index, PixelBox,            \
      typename Accumulate<T>::type*);                                                         \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, true)                                     \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, true, false)                                    \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, false, true)                                    \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, true, false, false)                                   \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, true)                                    \
  LSCONV_INSTANTIATE_BACKWARD(T, Index, false, true, false)

#define LSCONV_INSTANTIATE(T)          \
  LSCONV_INSTANTIATE_INDEX(T, int32_t) \
  LSCONV_INSTANTIATE_INDEX(T, int64_t)

template __global__ void ls_conv_sum_partials_kernel<float>(const float*, int64_t, double*);
template __global__ void ls_conv_sum_partials_kernel<double>(const double*, int64_t, double*);

LSCONV_INSTANTIATE(float)
LSCONV_INSTANTIATE(double)
LSCONV_INSTANTIATE(__half)
LSCONV_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace mmlstride

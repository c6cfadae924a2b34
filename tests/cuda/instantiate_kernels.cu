// Instantiates every CUDA kernel of csrc/common/cuda for every dtype the op
// supports, so that nvcc checks them on machines without a GPU or a CUDA build
// of torch (tests/test_cuda_kernels_compile.py).
#include "common/cuda/ls_conv_cuda_kernel.cuh"

namespace mmlstride {
namespace cuda {

#define LSCONV_INSTANTIATE_BACKWARD(T, kInput, kStride, kColumns)                    \
  template __global__ void ls_conv_backward_kernel<T, kInput, kStride, kColumns>(   \
      const T*, const T*, LSConvGeometry, int64_t, int64_t, T*,                      \
      typename Accumulate<T>::type*, T*);

#define LSCONV_INSTANTIATE(T)                                                               \
  template __global__ void ls_conv_im2col_kernel<T>(const T*, LSConvGeometry, int64_t,    \
                                                    int64_t, T*);                            \
  LSCONV_INSTANTIATE_BACKWARD(T, true, true, true)                                          \
  LSCONV_INSTANTIATE_BACKWARD(T, true, true, false)                                         \
  LSCONV_INSTANTIATE_BACKWARD(T, true, false, true)                                         \
  LSCONV_INSTANTIATE_BACKWARD(T, true, false, false)                                        \
  LSCONV_INSTANTIATE_BACKWARD(T, false, true, true)                                         \
  LSCONV_INSTANTIATE_BACKWARD(T, false, true, false)

LSCONV_INSTANTIATE(float)
LSCONV_INSTANTIATE(double)
LSCONV_INSTANTIATE(__half)
LSCONV_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace mmlstride

// Autocast of the learnable-stride convolution: the op runs in the autocast dtype on CUDA
// (float16 by default, as F.conv2d does) and in float32 on CPU, whose kernels have no
// low-precision path. Input, weight and bias are cast (float64 ones are left alone, as
// autocast does); the stride and the phase keep their dtypes.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../torch_compat.h"

namespace mmlstride {
namespace {

template <c10::DeviceType device_type>
at::Tensor ls_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& stride, const optional<at::Tensor>& bias,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              c10::SymIntArrayRef output_size,
                              const optional<at::Tensor>& phase) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const at::ScalarType dtype = device_type == c10::DeviceType::CUDA
      ? at::autocast::get_lower_precision_fp_from_device_type(device_type)
      : at::kFloat;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmlstride::ls_conv2d", "")
                             .typed<decltype(ls_conv2d_autocast<device_type>)>();
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type), stride,
                 at::autocast::cached_cast(dtype, bias, device_type), padding, dilation, groups,
                 output_size, phase);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmlstride, AutocastCPU, m) {
  m.impl("ls_conv2d", &ls_conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(mmlstride, AutocastCUDA, m) {
  m.impl("ls_conv2d", &ls_conv2d_autocast<c10::DeviceType::CUDA>);
}

}  // namespace mmlstride

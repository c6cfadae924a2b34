// Device-agnostic host code of the learnable-stride convolution: argument
// checks, tiling of the output rows, the GEMMs (through ATen) and the op
// registrations (CPU, CUDA when built WITH_CUDA, and autocast). The sampling
// work is done by the backend kernels of ls_conv_kernels.h.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

#include "ls_conv_kernels.h"

namespace mmlstride {
namespace {

// Target size of a columns buffer. The batch's output rows are processed in
// tiles of whole rows whose columns fit in it (one row when a single row needs
// more). Forward holds one such buffer, backward two (columns and their
// gradient), each with an (out_channels x tile columns) output tile.
// CPU: the GEMMs run fastest at a few hundred to a few thousand columns, and a
// buffer this size is reused from the heap rather than page-faulted anew.
// CUDA: large enough that the usual detection layers take one or two tiles,
// so each launch fills the GPU.
int64_t tile_bytes(const at::Device& device) {
  return device.is_cuda() ? int64_t(32) << 20 : int64_t(4) << 20;
}

// The dtype in which the columns gradient, the input gradient and the weight
// gradient are computed: float32 for float16 and bfloat16 input.
at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

// out (float32) <- a @ b for float16 or bfloat16 batches a and b, without
// rounding the product to their dtype (cuBLAS accumulates in float32 anyway).
void bmm_float32_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  at::bmm_out(out, a, b, at::kFloat);  // the out_dtype overload (torch 2.8)
#else
  at::bmm_out(out, a.to(at::kFloat), b.to(at::kFloat));
#endif
}

void check_like_input(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), name, ".device=", t.device(), " expected ",
              input.device(), " (the device of input)");
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name, ".dtype=", t.scalar_type(),
              " expected ", input.scalar_type(), " (the dtype of input)");
}

void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " has ", values.size(), " entries, expected 2");
  for (const int64_t v : values) {
    TORCH_CHECK(v >= minimum, name, "=", values, " expected entries >= ", minimum);
  }
}

// Checks the arguments shared by forward and backward; returns the geometry,
// reading the stride values (which must be positive and finite).
LSConvGeometry make_geometry(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, at::IntArrayRef output_size) {
  TORCH_CHECK(input.dim() == 4, "input.dim()=", input.dim(), " expected 4 (N, C, H, W)");
  TORCH_CHECK(weight.dim() == 4, "weight.dim()=", weight.dim(),
              " expected 4 (out_channels, in_channels / groups, kernel_h, kernel_w)");
  const at::ScalarType dtype = input.scalar_type();
  if (input.is_cuda()) {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                    dtype == at::kBFloat16,
                "input.dtype=", dtype, " expected float32, float64, float16 or bfloat16");
  } else {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "input.dtype=", dtype,
                " expected float32 or float64 on ", input.device().type(),
                " (float16 and bfloat16 run on CUDA)");
  }
  check_like_input(weight, "weight", input);
  // The stride keeps its own floating dtype (float32 under autocast, say): it
  // is read in float64 and its gradient is returned in its dtype.
  TORCH_CHECK(stride.device() == input.device(), "stride.device=", stride.device(), " expected ",
              input.device(), " (the device of input)");
  TORCH_CHECK(at::isFloatingType(stride.scalar_type()), "stride.dtype=", stride.scalar_type(),
              " expected a floating-point dtype");
  TORCH_CHECK(stride.dim() == 1 && stride.size(0) == 2, "stride.shape=", stride.sizes(),
              " expected [2] (stride_h, stride_w)");
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  check_pair(output_size, "output_size", 1);
  TORCH_CHECK(groups >= 1, "groups=", groups, " expected >= 1");
  const int64_t channels = input.size(1);
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(channels % groups == 0, "input channels=", channels, " expected a multiple of groups=",
              groups);
  TORCH_CHECK(out_channels % groups == 0, "weight.size(0)=", out_channels,
              " expected a multiple of groups=", groups);
  TORCH_CHECK(weight.size(1) * groups == channels, "weight.size(1)=", weight.size(1),
              " expected input channels / groups = ", channels / groups);
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t extent = dilation[axis] * (weight.size(2 + axis) - 1) + 1;
    const int64_t padded = input.size(2 + axis) + 2 * padding[axis];
    TORCH_CHECK(extent <= padded, "kernel extent=", extent, " along ", axis == 0 ? "h" : "w",
                " expected <= padded input size=", padded);
  }
  const at::Tensor stride_values = stride.detach().to(at::kCPU, at::kDouble);
  const double stride_h = stride_values.data_ptr<double>()[0];
  const double stride_w = stride_values.data_ptr<double>()[1];
  TORCH_CHECK(std::isfinite(stride_h) && std::isfinite(stride_w) && stride_h > 0 && stride_w > 0,
              "stride=(", stride_h, ", ", stride_w, ") expected finite values > 0");
  return LSConvGeometry{channels,        input.size(2),  input.size(3),  weight.size(2),
                        weight.size(3),  padding[0],     padding[1],     dilation[0],
                        dilation[1],     output_size[0], output_size[1], stride_h,
                        stride_w};
}

// Output rows per tile so that its columns stay within kTileBytes.
int64_t tile_rows(const LSConvGeometry& g, const at::Tensor& input) {
  const int64_t element_size = c10::elementSize(accumulate_type(input.scalar_type()));
  const int64_t per_row = g.channels * g.kernel_h * g.kernel_w * g.out_w * element_size;
  return std::max<int64_t>(1, tile_bytes(input.device()) / std::max<int64_t>(per_row, 1));
}

void im2col(const at::Tensor& input, const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
            const at::Tensor& columns) {
  RECORD_FUNCTION("mmlstride::im2col", std::vector<c10::IValue>());
#ifdef WITH_CUDA
  if (input.is_cuda()) return ls_conv_im2col_cuda(input, g, row_begin, row_end, columns);
#endif
  ls_conv_im2col_cpu(input, g, row_begin, row_end, columns);
}

void backward_sampling(const at::Tensor& grad_columns, const at::Tensor& input,
                       const LSConvGeometry& g, int64_t row_begin, int64_t row_end,
                       const at::Tensor& grad_input, const at::Tensor& stride_partials,
                       const at::Tensor& columns) {
  RECORD_FUNCTION("mmlstride::backward_sampling", std::vector<c10::IValue>());
#ifdef WITH_CUDA
  if (input.is_cuda()) {
    return ls_conv_backward_sampling_cuda(grad_columns, input, g, row_begin, row_end, grad_input,
                                          stride_partials, columns);
  }
#endif
  ls_conv_backward_sampling_cpu(grad_columns, input, g, row_begin, row_end, grad_input,
                                stride_partials, columns);
}

// First `rows * cols` elements of `buffer` as a contiguous rows x cols matrix.
at::Tensor matrix_view(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// Copies between an (N, O, out_h, out_w) tensor and a tile matrix (O, rows * out_w) of
// its output rows [row_begin, row_end), in the direction `to_tile`: one copy for
// the run of whole images, one for each partial image at either end.
void copy_tile(const at::Tensor& full, const at::Tensor& tile, const LSConvGeometry& g,
               int64_t row_begin, int64_t row_end, bool to_tile) {
  RECORD_FUNCTION("mmlstride::copy_tile", std::vector<c10::IValue>());
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t channels = full.size(1);
  for (int64_t row = row_begin; row < row_end;) {
    const int64_t image = row / g.out_h;
    const int64_t a = row % g.out_h;
    const int64_t images = a == 0 ? (row_end - row) / g.out_h : 0;
    const int64_t rows = images > 0 ? images * g.out_h : std::min(g.out_h - a, row_end - row);
    at::Tensor tile_part = tile.narrow(1, (row - row_begin) * g.out_w, rows * g.out_w);
    at::Tensor full_part;
    if (images > 0) {  // (O, images, plane) views of both
      full_part = full.narrow(0, image, images).view({images, channels, out_plane}).transpose(0, 1);
      tile_part = tile_part.view({channels, images, out_plane});
    } else {
      full_part = full.select(0, image)
                      .view({channels, out_plane})
                      .narrow(1, a * g.out_w, rows * g.out_w);
    }
    if (to_tile) {
      tile_part.copy_(full_part);
    } else {
      full_part.copy_(tile_part);
    }
    row += rows;
  }
}

at::Tensor ls_conv2d_forward(const at::Tensor& input_, const at::Tensor& weight_,
                             const std::optional<at::Tensor>& bias, const at::Tensor& stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef output_size) {
  const LSConvGeometry g =
      make_geometry(input_, weight_, stride, padding, dilation, groups, output_size);
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight.size(0);
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  if (bias.has_value() && bias->defined()) {
    check_like_input(*bias, "bias", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, "bias.shape=", bias->sizes(),
                " expected [", out_channels, "]");
  }
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, input.options());
  const int64_t total_rows = batch * g.out_h;
  if (total_rows > 0) {
    const at::Tensor weight_g = weight.view({groups, out_channels / groups, col_rows / groups});
    const int64_t step = std::min(tile_rows(g, input), total_rows);
    const at::Tensor columns_buffer = at::empty({col_rows * step * g.out_w}, input.options());
    const at::Tensor output_buffer = at::empty({out_channels * step * g.out_w}, input.options());
    for (int64_t begin = 0; begin < total_rows; begin += step) {
      const int64_t end = std::min(begin + step, total_rows);
      const int64_t cols = (end - begin) * g.out_w;
      const at::Tensor columns = matrix_view(columns_buffer, col_rows, cols);
      const at::Tensor output_tile = matrix_view(output_buffer, out_channels, cols);
      im2col(input, g, begin, end, columns);
      at::Tensor output_tile_g = output_tile.view({groups, out_channels / groups, cols});
      at::bmm_out(output_tile_g, weight_g, columns.view({groups, col_rows / groups, cols}));
      copy_tile(output, output_tile, g, begin, end, /*to_tile=*/false);
    }
  }
  if (bias.has_value() && bias->defined()) output.add_(bias->view({1, out_channels, 1, 1}));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ls_conv2d_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 4> output_mask) {
  TORCH_CHECK(grad_output_.dim() == 4, "grad_output.dim()=", grad_output_.dim(), " expected 4");
  const LSConvGeometry g = make_geometry(input_, weight_, stride, padding, dilation, groups,
                                         {grad_output_.size(2), grad_output_.size(3)});
  check_like_input(grad_output_, "grad_output", input_);
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(grad_output.size(0) == batch && grad_output.size(1) == out_channels,
              "grad_output.shape=", grad_output.sizes(), " expected [", batch, ", ", out_channels,
              ", out_h, out_w]");
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  const bool need_input = output_mask[0];
  const bool need_weight = output_mask[1];
  const bool need_stride = output_mask[3];

  // Accumulated in float32 for float16 and bfloat16 inputs.
  const bool low_precision = accumulate_type(input.scalar_type()) != input.scalar_type();
  const at::TensorOptions accumulate = input.options().dtype(accumulate_type(input.scalar_type()));
  at::Tensor grad_input = need_input ? at::zeros(input.sizes(), accumulate) : at::Tensor();
  at::Tensor grad_weight = need_weight ? at::zeros(weight.sizes(), accumulate) : at::Tensor();
  at::Tensor grad_bias = output_mask[2]
      ? grad_output.sum(at::IntArrayRef{0, 2, 3}, false, accumulate_type(input.scalar_type()))
      : at::Tensor();
  // One pair per image plane on CPU, one pair on CUDA (ls_conv_kernels.h).
  at::Tensor stride_partials = need_stride
      ? at::zeros(input.is_cuda() ? at::IntArrayRef{1, 2} : at::IntArrayRef{batch, g.channels, 2},
                  input.options().dtype(at::kDouble))
      : at::Tensor();

  const int64_t total_rows = batch * g.out_h;
  if (total_rows > 0 && (need_input || need_weight || need_stride)) {
    const at::Tensor weight_g = weight.view({groups, out_channels / groups, col_rows / groups});
    at::Tensor grad_weight_g =
        need_weight ? grad_weight.view({groups, out_channels / groups, col_rows / groups})
                    : at::Tensor();
    const int64_t step = std::min(tile_rows(g, input), total_rows);
    const at::Tensor columns_buffer =
        need_weight ? at::empty({col_rows * step * g.out_w}, input.options()) : at::Tensor();
    const at::Tensor grad_columns_buffer = need_input || need_stride
        ? at::empty({col_rows * step * g.out_w}, accumulate)
        : at::Tensor();
    const at::Tensor grad_output_buffer =
        at::empty({out_channels * step * g.out_w}, input.options());
    for (int64_t begin = 0; begin < total_rows; begin += step) {
      const int64_t end = std::min(begin + step, total_rows);
      const int64_t cols = (end - begin) * g.out_w;
      const at::Tensor grad_output_tile = matrix_view(grad_output_buffer, out_channels, cols);
      copy_tile(grad_output, grad_output_tile, g, begin, end, /*to_tile=*/true);
      const at::Tensor grad_output_g = grad_output_tile.view({groups, out_channels / groups, cols});
      const at::Tensor columns =
          need_weight ? matrix_view(columns_buffer, col_rows, cols) : at::Tensor();
      if (need_input || need_stride) {
        // One pass computes the input and stride gradients and the columns for dw.
        const at::Tensor grad_columns = matrix_view(grad_columns_buffer, col_rows, cols);
        at::Tensor grad_columns_g = grad_columns.view({groups, col_rows / groups, cols});
        if (low_precision) {
          bmm_float32_out(grad_columns_g, weight_g.transpose(1, 2), grad_output_g);
        } else {
          at::bmm_out(grad_columns_g, weight_g.transpose(1, 2), grad_output_g);
        }
        backward_sampling(grad_columns, input, g, begin, end, grad_input, stride_partials,
                          columns);
      } else {
        im2col(input, g, begin, end, columns);
      }
      if (need_weight) {
        const at::Tensor columns_t = columns.view({groups, col_rows / groups, cols}).transpose(1, 2);
        if (low_precision) {  // each tile's product in float32, summed in float32
          at::Tensor tile_product =
              at::empty(grad_weight_g.sizes(), grad_weight_g.options());
          bmm_float32_out(tile_product, grad_output_g, columns_t);
          grad_weight_g.add_(tile_product);
        } else {
          grad_weight_g.baddbmm_(grad_output_g, columns_t);
        }
      }
    }
  }
  at::Tensor grad_stride = need_stride
      ? stride_partials.view({-1, 2}).sum(0).to(stride.scalar_type())
      : at::Tensor();
  const at::ScalarType dtype = input.scalar_type();
  return {need_input ? grad_input.to(dtype) : grad_input,
          need_weight ? grad_weight.to(dtype) : grad_weight,
          output_mask[2] ? grad_bias.to(dtype) : grad_bias, grad_stride};
}

// Autocast: the op runs in the autocast dtype on CUDA (float16 by default, as
// F.conv2d does) and in float32 on CPU, whose kernels have no low-precision
// path. Input, weight and bias are cast (float64 ones are left alone, as
// autocast does); the stride keeps its dtype.
template <c10::DeviceType device_type>
at::Tensor ls_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              c10::SymIntArrayRef output_size) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const at::ScalarType dtype = device_type == c10::DeviceType::CUDA
      ? at::autocast::get_autocast_dtype(device_type)
      : at::kFloat;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmlstride::ls_conv2d", "")
                             .typed<decltype(ls_conv2d_autocast<device_type>)>();
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 groups, output_size);
}

}  // namespace

TORCH_LIBRARY(mmlstride, m) {
  m.def(
      "ls_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor stride, int[2] padding, "
      "int[2] dilation, int groups, SymInt[2] output_size) -> Tensor");
  m.def(
      "ls_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor stride, "
      "int[2] padding, int[2] dilation, int groups, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmlstride, CPU, m) {
  m.impl("ls_conv2d", &ls_conv2d_forward);
  m.impl("ls_conv2d_backward", &ls_conv2d_backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(mmlstride, CUDA, m) {
  m.impl("ls_conv2d", &ls_conv2d_forward);
  m.impl("ls_conv2d_backward", &ls_conv2d_backward);
}
#endif

TORCH_LIBRARY_IMPL(mmlstride, AutocastCPU, m) {
  m.impl("ls_conv2d", &ls_conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(mmlstride, AutocastCUDA, m) {
  m.impl("ls_conv2d", &ls_conv2d_autocast<c10::DeviceType::CUDA>);
}

}  // namespace mmlstride

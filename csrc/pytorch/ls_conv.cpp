// The learnable-stride convolution's schema and its device-agnostic driver: argument
// checks, the tiling of the output rows, and the forward and backward over a backend's
// sampling kernels and tile products (ls_conv_backend.h). The backends register their
// kernels themselves (cpu/, cuda/), and so does autocast (autocast/).
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "ls_conv_backend.h"

namespace mmlstride {
namespace {

void check_like_input(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ".device=", t.device(), " expected ",
                    input.device(), " (the device of input)");
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, ".dtype=", t.scalar_type(),
                   " expected ", input.scalar_type(), " (the dtype of input)");
}

void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK_VALUE(values.size() == 2, name, " has ", values.size(), " entries, expected 2");
  for (const int64_t v : values) {
    TORCH_CHECK_VALUE(v >= minimum, name, "=", values, " expected entries >= ", minimum);
  }
}

// Checks a stride or a phase tensor: on input's device, a floating dtype (any: it is read in
// float64, and its gradient returned in its dtype), shape [2]. Its values are checked where
// they are read (LSConvBackend::prepare).
void check_pair_tensor(const at::Tensor& t, const char* name, const char* axes,
                       const at::Tensor& input) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ".device=", t.device(), " expected ",
                    input.device(), " (the device of input)");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ".dtype=", t.scalar_type(),
                   " expected a floating-point dtype");
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == 2, name, ".shape=", t.sizes(), " expected [2] ",
                    axes);
}

// Checks the arguments shared by forward and backward (bad values raise ValueError, bad
// dtypes TypeError, as the Python function does) and returns the geometry.
LSConvGeometry make_geometry(const LSConvBackend& backend, const at::Tensor& input,
                             const at::Tensor& weight, const at::Tensor& stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef output_size) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input.dim()=", input.dim(), " expected 4 (N, C, H, W)");
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight.dim()=", weight.dim(),
                    " expected 4 (out_channels, in_channels / groups, kernel_h, kernel_w)");
  backend.check_dtype(input);
  check_like_input(weight, "weight", input);
  check_pair_tensor(stride, "stride", "(stride_h, stride_w)", input);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  check_pair(output_size, "output_size", 1);
  TORCH_CHECK_VALUE(groups >= 1, "groups=", groups, " expected >= 1");
  const int64_t channels = input.size(1);
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK_VALUE(channels % groups == 0, "input channels=", channels,
                    " expected a multiple of groups=", groups);
  TORCH_CHECK_VALUE(out_channels % groups == 0, "weight.size(0)=", out_channels,
                    " expected a multiple of groups=", groups);
  TORCH_CHECK_VALUE(weight.size(1) * groups == channels, "weight.size(1)=", weight.size(1),
                    " expected input channels / groups = ", channels / groups);
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t extent = dilation[axis] * (weight.size(2 + axis) - 1) + 1;
    const int64_t padded = input.size(2 + axis) + 2 * padding[axis];
    TORCH_CHECK_VALUE(extent <= padded, "kernel extent=", extent, " along ",
                      axis == 0 ? "h" : "w", " expected <= padded input size=", padded);
  }
  return LSConvGeometry{channels,       input.size(2),  input.size(3), weight.size(2),
                        weight.size(3), padding[0],     padding[1],    dilation[0],
                        dilation[1],    output_size[0], output_size[1]};
}

// The phase, checked, or an undefined tensor when absent.
at::Tensor checked_phase(const optional<at::Tensor>& phase, const at::Tensor& input) {
  if (!phase.has_value() || !phase->defined()) return at::Tensor();
  check_pair_tensor(*phase, "phase", "(phase_h, phase_w)", input);
  return *phase;
}

// The bias, checked and contiguous, or nullopt when absent.
optional<at::Tensor> checked_bias(const optional<at::Tensor>& bias, const at::Tensor& input,
                                  int64_t out_channels) {
  if (!bias.has_value() || !bias->defined()) return nullopt;
  check_like_input(*bias, "bias", input);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_channels, "bias.shape=",
                    bias->sizes(), " expected [", out_channels, "]");
  return bias->contiguous();
}

PreparedStride prepare(const LSConvBackend& backend, const at::Tensor& stride,
                       const at::Tensor& phase, const at::Tensor& input,
                       const LSConvGeometry& g, bool stride_gradient) {
  RECORD_FUNCTION("mmlstride::prepare_stride", std::vector<c10::IValue>());
  return backend.prepare(stride, phase, input, g, stride_gradient);
}

// Output rows per tile: as many as keep its columns within the backend's tile_bytes, but
// enough for kMinTileColumns columns, below which the GEMMs run well under the machine's
// rate (their weight is read for too few columns: 8 x 512 ch @ 14 on the CPU, 2 GEMMs of
// 196 columns 11.1 ms against 9.7 ms for one of 392).
int64_t tile_rows(const LSConvBackend& backend, const LSConvGeometry& g,
                  const at::Tensor& input) {
  constexpr int64_t kMinTileColumns = 512;
  const int64_t element_size = c10::elementSize(accumulate_type(input.scalar_type()));
  const int64_t per_row = g.channels * g.kernel_h * g.kernel_w * g.out_w * element_size;
  const int64_t by_bytes = backend.tile_bytes() / std::max<int64_t>(per_row, 1);
  const int64_t by_columns = (kMinTileColumns + g.out_w - 1) / std::max<int64_t>(g.out_w, 1);
  return std::max<int64_t>({1, by_bytes, by_columns});
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

// The end of the tile that starts at output row `begin`: whole images when `step` rows hold
// at least one, else at most `step` rows of one image, so that the GEMMs of a tile within one
// image read and write the (N, O, out_h, out_w) tensors in place (rows_of_image). A tile of
// several images goes through a buffer and a copy: batching its GEMM per image would be
// slower where images are small (8 x 512 ch @ 7x7: 14 ms against 10 ms for one GEMM).
int64_t tile_end(int64_t begin, int64_t step, const LSConvGeometry& g, int64_t total_rows) {
  if (step >= g.out_h) return std::min(begin + step / g.out_h * g.out_h, total_rows);
  return std::min(begin + step, (begin / g.out_h + 1) * g.out_h);
}

// Whether the output rows [row_begin, row_end) lie in one image.
bool within_one_image(const LSConvGeometry& g, int64_t row_begin, int64_t row_end) {
  return (row_end - 1) / g.out_h == row_begin / g.out_h;
}

// Rows [row_begin, row_end) of one image of an (N, O, out_h, out_w) tensor as a strided
// (groups, O / groups, rows * out_w) view.
at::Tensor rows_of_image(const at::Tensor& full, const LSConvGeometry& g, int64_t groups,
                         int64_t row_begin, int64_t row_end) {
  const int64_t image = row_begin / g.out_h;
  return full.select(0, image)
      .view({groups, full.size(1) / groups, g.out_h * g.out_w})
      .narrow(2, (row_begin - image * g.out_h) * g.out_w, (row_end - row_begin) * g.out_w);
}

// A buffer allocated on first use.
struct LazyBuffer {
  int64_t numel;
  at::TensorOptions options;
  at::Tensor tensor;

  const at::Tensor& get() {
    if (!tensor.defined()) tensor = at::empty({numel}, options);
    return tensor;
  }
};

// The forward through tiles of columns: sampled by the backend, multiplied by `products`.
void forward_by_tiles(const LSConvBackend& backend, TileProducts& products,
                      const at::Tensor& input, const LSConvGeometry& g,
                      const PreparedStride& prepared, int64_t groups, at::Tensor& output) {
  const int64_t out_channels = output.size(1);
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  const int64_t total_rows = output.size(0) * g.out_h;
  const int64_t step = std::min(tile_rows(backend, g, input), total_rows);
  const at::Tensor columns_buffer = at::empty({col_rows * step * g.out_w}, input.options());
  // For tiles whose output cannot be written in place.
  LazyBuffer output_buffer{out_channels * step * g.out_w, input.options()};
  for (int64_t begin = 0, end = 0; begin < total_rows; begin = end) {
    end = tile_end(begin, step, g, total_rows);
    const int64_t cols = (end - begin) * g.out_w;
    const at::Tensor columns = matrix_view(columns_buffer, col_rows, cols);
    {
      RECORD_FUNCTION("mmlstride::im2col", std::vector<c10::IValue>());
      backend.im2col(input, g, prepared, begin, end, columns);
    }
    // In place: the product is written into the output's rows; else copied there.
    const bool in_place = products.in_place() && within_one_image(g, begin, end);
    at::Tensor target;
    if (in_place) {
      target = rows_of_image(output, g, groups, begin, end);
    } else if (products.in_place()) {
      target = matrix_view(output_buffer.get(), out_channels, cols)
                   .view({groups, out_channels / groups, cols});
    }
    const at::Tensor product = products.forward(columns, target);
    if (!in_place) {
      copy_tile(output, product.view({out_channels, cols}), g, begin, end, /*to_tile=*/false);
    }
  }
}

// The input, weight (through `products`), stride and phase gradients through tiles: per tile,
// the columns gradient's scatter (with the stride's sums and the columns for the weight
// gradient) or, for the weight gradient alone, the columns.
void backward_by_tiles(const LSConvBackend& backend, TileProducts& products,
                       const at::Tensor& grad_output, const at::Tensor& input,
                       const LSConvGeometry& g, const PreparedStride& prepared, int64_t groups,
                       const at::Tensor& grad_input, bool tile_weight, bool need_stride) {
  const int64_t out_channels = grad_output.size(1);
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  const int64_t total_rows = grad_output.size(0) * g.out_h;
  const int64_t step = std::min(tile_rows(backend, g, input), total_rows);
  const bool need_grad_columns = grad_input.defined() || need_stride;
  const at::Tensor columns_buffer =
      tile_weight ? at::empty({col_rows * step * g.out_w}, input.options()) : at::Tensor();
  const at::Tensor grad_columns_buffer = need_grad_columns && products.in_place()
      ? at::empty({col_rows * step * g.out_w},
                  input.options().dtype(accumulate_type(input.scalar_type())))
      : at::Tensor();
  // For tiles whose grad_output cannot be read in place.
  LazyBuffer grad_output_buffer{out_channels * step * g.out_w, input.options()};
  for (int64_t begin = 0, end = 0; begin < total_rows; begin = end) {
    end = tile_end(begin, step, g, total_rows);
    const int64_t cols = (end - begin) * g.out_w;
    // grad_output's rows of the tile as (groups, O / groups, cols).
    at::Tensor grad_output_rows;
    if (products.in_place() && within_one_image(g, begin, end)) {
      grad_output_rows = rows_of_image(grad_output, g, groups, begin, end);
    } else {
      const at::Tensor tile = matrix_view(grad_output_buffer.get(), out_channels, cols);
      copy_tile(grad_output, tile, g, begin, end, /*to_tile=*/true);
      grad_output_rows = tile.view({groups, out_channels / groups, cols});
    }
    const at::Tensor columns =
        tile_weight ? matrix_view(columns_buffer, col_rows, cols) : at::Tensor();
    if (need_grad_columns) {
      const at::Tensor grad_columns = products.columns_gradient(
          grad_output_rows, grad_columns_buffer.defined()
                                ? matrix_view(grad_columns_buffer, col_rows, cols)
                                : at::Tensor());
      RECORD_FUNCTION("mmlstride::backward_sampling", std::vector<c10::IValue>());
      // One pass: the input and stride gradients, and the columns for the weight gradient.
      backend.backward_sampling(grad_columns, input, g, prepared, begin, end, grad_input,
                                need_stride, columns);
    } else {
      RECORD_FUNCTION("mmlstride::im2col", std::vector<c10::IValue>());
      backend.im2col(input, g, prepared, begin, end, columns);
    }
    if (tile_weight) products.add_weight_gradient(grad_output_rows, columns);
  }
}

// The stride's and the phase's gradients (undefined where not wanted) from their partials.
std::pair<at::Tensor, at::Tensor> stride_and_phase_gradients(const PreparedStride& prepared,
                                                             const at::Tensor& stride,
                                                             const at::Tensor& phase,
                                                             bool need_stride, bool need_phase) {
  const at::Tensor& partials = prepared.partials;
  const at::Tensor sums = partials.size(0) == 1 ? partials[0] : partials.sum(0);
  // Copies: views of one tensor would alias each other.
  return {need_stride ? sums.narrow(0, 0, 2).to(stride.scalar_type(), false, true)
                      : at::Tensor(),
          need_phase ? sums.narrow(0, 2, 2).to(phase.scalar_type(), false, true) : at::Tensor()};
}

}  // namespace

at::Tensor ls_conv2d_forward(const LSConvBackend& backend, const at::Tensor& input_,
                             const at::Tensor& weight_, const at::Tensor& stride,
                             const optional<at::Tensor>& bias_, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef output_size, const optional<at::Tensor>& phase_) {
  const LSConvGeometry g =
      make_geometry(backend, input_, weight_, stride, padding, dilation, groups, output_size);
  const at::Tensor phase = checked_phase(phase_, input_);
  const optional<at::Tensor> bias = checked_bias(bias_, input_, weight_.size(0));
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const PreparedStride prepared =
      prepare(backend, stride, phase, input, g, /*stride_gradient=*/false);
  at::Tensor output = at::empty({input.size(0), weight.size(0), g.out_h, g.out_w},
                                input.options());
  if (output.numel() == 0) return output;
  if (!backend.forward_whole(input, weight, bias, g, prepared, groups, output)) {
    const auto products = backend.products(input, weight, bias, groups, false);
    forward_by_tiles(backend, *products, input, g, prepared, groups, output);
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ls_conv2d_backward(
    const LSConvBackend& backend, const at::Tensor& grad_output_, const at::Tensor& input_,
    const at::Tensor& weight_, const at::Tensor& stride, const optional<at::Tensor>& phase_,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 5> output_mask) {
  TORCH_CHECK_VALUE(grad_output_.dim() == 4, "grad_output.dim()=", grad_output_.dim(),
                    " expected 4");
  const LSConvGeometry g = make_geometry(backend, input_, weight_, stride, padding, dilation,
                                         groups, {grad_output_.size(2), grad_output_.size(3)});
  const at::Tensor phase = checked_phase(phase_, input_);
  const auto [need_input, need_weight, need_stride, need_bias, need_phase] = output_mask;
  TORCH_CHECK_VALUE(phase.defined() || !need_phase,
                    "output_mask[4]=true (the phase's gradient) expected a phase");
  check_like_input(grad_output_, "grad_output", input_);
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  TORCH_CHECK_VALUE(grad_output.size(0) == input.size(0) && grad_output.size(1) == weight.size(0),
                    "grad_output.shape=", grad_output.sizes(), " expected [", input.size(0),
                    ", ", weight.size(0), ", out_h, out_w]");
  const at::ScalarType accumulate = accumulate_type(input.scalar_type());
  // The stride's and the phase's gradients come from one reduction.
  const bool stride_sums = need_stride || need_phase;
  PreparedStride prepared = prepare(backend, stride, phase, input, g, stride_sums);
  prepared.phase_gradient = need_phase;
  at::Tensor grad_input =
      need_input ? at::zeros(input.sizes(), input.options().dtype(accumulate)) : at::Tensor();
  at::Tensor grad_weight;
  if (need_weight && grad_output.numel() > 0) {
    grad_weight = backend.weight_gradient_whole(grad_output, input, g, prepared, groups);
  }
  const bool tile_weight = need_weight && !grad_weight.defined();
  const auto products = backend.products(input, weight, nullopt, groups, tile_weight);
  if (grad_output.numel() > 0 && (need_input || tile_weight || stride_sums)) {
    backward_by_tiles(backend, *products, grad_output, input, g, prepared, groups, grad_input,
                      tile_weight, stride_sums);
  }
  if (tile_weight) grad_weight = products->weight_gradient();
  const at::Tensor grad_bias =
      need_bias ? grad_output.sum(at::IntArrayRef{0, 2, 3}, false, accumulate) : at::Tensor();
  const auto [grad_stride, grad_phase] =
      stride_sums ? stride_and_phase_gradients(prepared, stride, phase, need_stride, need_phase)
                  : std::pair<at::Tensor, at::Tensor>();
  const at::ScalarType dtype = input.scalar_type();
  return {need_input ? grad_input.to(dtype) : grad_input,
          need_weight ? grad_weight.to(dtype) : grad_weight, grad_stride,
          need_bias ? grad_bias.to(dtype) : grad_bias, grad_phase};
}

TORCH_LIBRARY(mmlstride, m) {
  // phase: an optional (2,) translation of the sampling grid (ls_conv_sampling.h), last so
  // that calls without it keep their form.
  m.def(
      "ls_conv2d(Tensor input, Tensor weight, Tensor stride, Tensor? bias, int[2] padding, "
      "int[2] dilation, int groups, SymInt[2] output_size, Tensor? phase=None) -> Tensor");
  // The gradients of (input, weight, stride, bias, phase) where output_mask says so.
  m.def(
      "ls_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor stride, "
      "Tensor? phase, int[2] padding, int[2] dilation, int groups, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace mmlstride

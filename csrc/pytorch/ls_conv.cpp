// Device-agnostic host code of the learnable-stride convolution: argument
// checks, tiling of the output rows, the GEMMs (through ATen) and the op
// registrations (CPU, CUDA when built WITH_CUDA, and autocast). The sampling
// work is done by the backend kernels of ls_conv_kernels.h.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>

#include "ls_conv_kernels.h"

namespace mmlstride {
namespace {

// Target size of a columns buffer. The batch's output rows are processed in
// tiles of whole rows whose columns fit in it (see tile_rows: at least one row,
// and at least 512 columns, so a tile may exceed it). Forward holds one such
// buffer, backward two (columns and their gradient), each with an (out_channels
// x tile columns) output tile. (The CPU's forward by bands, ls_conv_forward_bands_cpu,
// has no such tiles.)
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
#if MMLSTRIDE_TORCH_AT_LEAST(2, 8)
  at::bmm_out(out, a, b, at::kFloat);  // the out_dtype overload (torch 2.8)
#else
  at::bmm_out(out, a.to(at::kFloat), b.to(at::kFloat));
#endif
}

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

// Checks the arguments shared by forward and backward (bad values raise ValueError, bad
// dtypes TypeError, as the Python layer does) and returns the geometry. The stride's
// values are not read here: see PreparedStride.
LSConvGeometry make_geometry(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, at::IntArrayRef output_size) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input.dim()=", input.dim(), " expected 4 (N, C, H, W)");
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight.dim()=", weight.dim(),
                    " expected 4 (out_channels, in_channels / groups, kernel_h, kernel_w)");
  const at::ScalarType dtype = input.scalar_type();
  if (input.is_cuda()) {
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16,
                     "input.dtype=", dtype, " expected float32, float64, float16 or bfloat16");
  } else {
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "input.dtype=", dtype,
                     " expected float32 or float64 on ", input.device().type(),
                     " (float16 and bfloat16 run on CUDA)");
  }
  check_like_input(weight, "weight", input);
  // The stride keeps its own floating dtype (float32 under autocast, say): it is read
  // in float64 and its gradient is returned in its dtype.
  TORCH_CHECK_VALUE(stride.device() == input.device(), "stride.device=", stride.device(),
                    " expected ", input.device(), " (the device of input)");
  TORCH_CHECK_TYPE(at::isFloatingType(stride.scalar_type()), "stride.dtype=",
                   stride.scalar_type(), " expected a floating-point dtype");
  TORCH_CHECK_VALUE(stride.dim() == 1 && stride.size(0) == 2, "stride.shape=", stride.sizes(),
                    " expected [2] (stride_h, stride_w)");
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

// The phase (undefined when absent) after checking it like the stride: on input's device,
// a floating dtype (any: it is read in float64), shape [2]. Its values are checked where
// they are read (finite), as the stride's.
at::Tensor checked_phase(const optional<at::Tensor>& phase, const at::Tensor& input) {
  if (!phase.has_value() || !phase->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(phase->device() == input.device(), "phase.device=", phase->device(),
                    " expected ", input.device(), " (the device of input)");
  TORCH_CHECK_TYPE(at::isFloatingType(phase->scalar_type()), "phase.dtype=",
                   phase->scalar_type(), " expected a floating-point dtype");
  TORCH_CHECK_VALUE(phase->dim() == 1 && phase->size(0) == 2, "phase.shape=", phase->sizes(),
                    " expected [2] (phase_h, phase_w)");
  return *phase;
}

// The stride and phase as the backend reads them (CUDA: tables made on the device, no host
// sync; CPU: their values), with the partial sums of their gradients when `stride_gradient`.
PreparedStride prepare_stride(const at::Tensor& stride, const at::Tensor& phase,
                              const at::Tensor& input, const LSConvGeometry& g,
                              bool stride_gradient) {
  RECORD_FUNCTION("mmlstride::prepare_stride", std::vector<c10::IValue>());
#ifdef WITH_CUDA
  if (input.is_cuda()) return ls_conv_prepare_cuda(stride, phase, input, g, stride_gradient);
#endif
  return ls_conv_prepare_cpu(stride, phase, g, input.size(0), stride_gradient);
}

// Output rows per tile: as many as keep its columns within tile_bytes, but enough for
// kMinTileColumns columns, below which the GEMMs run well under the machine's rate (their
// weight is read for too few columns: 8 x 512 ch @ 14 on the CPU, 2 GEMMs of 196 columns
// 11.1 ms against 9.7 ms for one of 392).
int64_t tile_rows(const LSConvGeometry& g, const at::Tensor& input) {
  constexpr int64_t kMinTileColumns = 512;
  const int64_t element_size = c10::elementSize(accumulate_type(input.scalar_type()));
  const int64_t per_row = g.channels * g.kernel_h * g.kernel_w * g.out_w * element_size;
  const int64_t by_bytes = tile_bytes(input.device()) / std::max<int64_t>(per_row, 1);
  const int64_t by_columns = (kMinTileColumns + g.out_w - 1) / std::max<int64_t>(g.out_w, 1);
  return std::max<int64_t>({1, by_bytes, by_columns});
}

void im2col(const at::Tensor& input, const LSConvGeometry& g, const PreparedStride& stride,
            int64_t row_begin, int64_t row_end, const at::Tensor& columns) {
  RECORD_FUNCTION("mmlstride::im2col", std::vector<c10::IValue>());
#ifdef WITH_CUDA
  if (input.is_cuda()) return ls_conv_im2col_cuda(input, g, stride, row_begin, row_end, columns);
#endif
  ls_conv_im2col_cpu(input, g, stride, row_begin, row_end, columns);
}

void backward_sampling(const at::Tensor& grad_columns, const at::Tensor& input,
                       const LSConvGeometry& g, const PreparedStride& stride, int64_t row_begin,
                       int64_t row_end, const at::Tensor& grad_input, bool stride_gradient,
                       const at::Tensor& columns) {
  RECORD_FUNCTION("mmlstride::backward_sampling", std::vector<c10::IValue>());
#ifdef WITH_CUDA
  if (input.is_cuda()) {
    return ls_conv_backward_sampling_cuda(grad_columns, input, g, stride, row_begin, row_end,
                                          grad_input, stride_gradient, columns);
  }
#endif
  ls_conv_backward_sampling_cpu(grad_columns, input, g, stride, row_begin, row_end, grad_input,
                                stride_gradient, columns);
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

// On CUDA, float32 GEMMs run as 1x1 convolutions (at::convolution on an (1, K, 1, ncols)
// view), so they follow the float32 precision rule of the convolution LSConv replaces:
// torch.backends.cudnn.allow_tf32 (on by default), as F.conv2d does, where batched matrix
// products would follow torch.backends.cuda.matmul.allow_tf32 (off by default). Other
// dtypes, and the CPU (whose batched products repeat bit for bit across thread counts),
// use batched matrix products. MMLSTRIDE_GEMM_AS_CONVOLUTION=1 in the environment makes
// the CPU take the convolution path too, for the tests (tests/test_oracles.py).
bool gemm_as_convolution(const at::Tensor& input) {
  static const bool forced = [] {
    const char* value = std::getenv("MMLSTRIDE_GEMM_AS_CONVOLUTION");
    return value != nullptr && std::string(value) == "1";
  }();
  return input.scalar_type() == at::kFloat && (input.is_cuda() || forced);
}

// 1x1 convolution of a (K, ncols) matrix with an (O, K / groups) weight: (O, ncols).
at::Tensor convolve_1x1(const at::Tensor& matrix, const at::Tensor& weight,
                        const optional<at::Tensor>& bias, int64_t groups) {
  const at::Tensor out = at::convolution(
      matrix.view({1, matrix.size(0), 1, matrix.size(1)}),
      weight.view({weight.size(0), weight.numel() / weight.size(0), 1, 1}), bias, {1, 1},
      {0, 0}, {1, 1}, false, {0, 0}, groups);
  return out.reshape({out.size(1), out.size(3)});  // a view unless cuDNN chose another layout
}

// Whether the forward and the weight gradient take the fused sampling GEMMs (CUDA:
// float16, bfloat16 from sm_80, float64; see ls_conv_fused_cuda), which gather the columns
// into shared memory rather than writing them to global memory. float32 keeps the columns
// and cuDNN's products, which follow its TF32 setting as F.conv2d does.
bool takes_fused_products(const at::Tensor& input, const LSConvGeometry& g) {
#ifdef WITH_CUDA
  return input.is_cuda() && ls_conv_fused_cuda(input, g);
#else
  (void)input;
  (void)g;
  return false;
#endif
}

void forward_fused(const at::Tensor& input, const at::Tensor& weight,
                   const optional<at::Tensor>& bias, const LSConvGeometry& g,
                   const PreparedStride& prepared, int64_t groups, at::Tensor& output) {
#ifdef WITH_CUDA
  ls_conv_forward_fused_cuda(input, weight, bias, g, prepared, groups, output);
#else
  TORCH_CHECK(false, "mmlstride was built without CUDA");
#endif
}

at::Tensor weight_gradient_fused(const at::Tensor& grad_output, const at::Tensor& input,
                                 const LSConvGeometry& g, const PreparedStride& prepared,
                                 int64_t groups, int64_t out_channels) {
#ifdef WITH_CUDA
  return ls_conv_weight_gradient_fused_cuda(grad_output, input, g, prepared, groups,
                                            out_channels);
#else
  TORCH_CHECK(false, "mmlstride was built without CUDA");
#endif
}

// Whether the forward takes ls_conv_forward_bands_cpu: on the CPU (unless the GEMMs are
// forced to the CUDA path's convolutions), where the weight is no larger than the input. A
// larger one (8 x 512 ch @ 14) runs faster through the channel-major tiles' one
// multi-threaded GEMM than through each band's single-threaded one.
bool takes_bands(const at::Tensor& input, const at::Tensor& weight) {
  return !input.is_cuda() && !gemm_as_convolution(input) && weight.numel() <= input.numel();
}

at::Tensor ls_conv2d_forward(const at::Tensor& input_, const at::Tensor& weight_,
                             const optional<at::Tensor>& bias_, const at::Tensor& stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef output_size,
                             const optional<at::Tensor>& phase_) {
  const LSConvGeometry g =
      make_geometry(input_, weight_, stride, padding, dilation, groups, output_size);
  const at::Tensor phase = checked_phase(phase_, input_);
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight.size(0);
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  optional<at::Tensor> bias;
  if (bias_.has_value() && bias_->defined()) {
    check_like_input(*bias_, "bias", input);
    TORCH_CHECK_VALUE(bias_->dim() == 1 && bias_->size(0) == out_channels, "bias.shape=",
                      bias_->sizes(), " expected [", out_channels, "]");
    bias = bias_->contiguous();
  }
  const PreparedStride prepared =
      prepare_stride(stride, phase, input, g, /*stride_gradient=*/false);
  at::Tensor output = at::empty({batch, out_channels, g.out_h, g.out_w}, input.options());
  const int64_t total_rows = batch * g.out_h;
  if (total_rows == 0) return output;
  if (takes_bands(input, weight)) {
    ls_conv_forward_bands_cpu(input, weight, bias, g, prepared, groups, output);
    return output;
  }
  if (takes_fused_products(input, g)) {
    forward_fused(input, weight, bias, g, prepared, groups, output);
    return output;
  }
  const at::Tensor weight_g = weight.view({groups, out_channels / groups, col_rows / groups});
  const int64_t step = std::min(tile_rows(g, input), total_rows);
  const at::Tensor columns_buffer = at::empty({col_rows * step * g.out_w}, input.options());
  at::Tensor output_buffer;  // for tiles whose output cannot be written in place
  for (int64_t begin = 0, end = 0; begin < total_rows; begin = end) {
    end = tile_end(begin, step, g, total_rows);
    const int64_t cols = (end - begin) * g.out_w;
    const at::Tensor columns = matrix_view(columns_buffer, col_rows, cols);
    im2col(input, g, prepared, begin, end, columns);
    if (gemm_as_convolution(input)) {  // the bias is added by the convolution
      copy_tile(output, convolve_1x1(columns, weight, bias, groups), g, begin, end,
                /*to_tile=*/false);
      continue;
    }
    const bool in_place = within_one_image(g, begin, end);
    at::Tensor target;
    if (in_place) {
      target = rows_of_image(output, g, groups, begin, end);
    } else {
      if (!output_buffer.defined()) {
        output_buffer = at::empty({out_channels * step * g.out_w}, input.options());
      }
      target = matrix_view(output_buffer, out_channels, cols)
                   .view({groups, out_channels / groups, cols});
    }
    const at::Tensor columns_g = columns.view({groups, col_rows / groups, cols});
    if (ls_conv_onednn_matmul_cpu(input)) {  // per group, then the bias
      for (int64_t group = 0; group < groups; ++group) {
        target.select(0, group).copy_(ls_conv_onednn_linear_cpu(
            weight_g.select(0, group), columns_g.select(0, group).t(), nullopt));
      }
      if (bias) target.add_(bias->view({groups, out_channels / groups, 1}));
    } else if (bias) {  // target <- bias + weight @ columns
      at::baddbmm_out(target, bias->view({groups, out_channels / groups, 1}).expand_as(target),
                      weight_g, columns_g);
    } else {
      at::bmm_out(target, weight_g, columns_g);
    }
    if (!in_place) {
      copy_tile(output, target.view({out_channels, cols}), g, begin, end, /*to_tile=*/false);
    }
  }
  return output;
}

// The gradients of (input, weight, bias, stride, phase) asked for by output_mask (undefined
// where not). The phase's needs a phase.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ls_conv2d_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& stride, const optional<at::Tensor>& phase_, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 5> output_mask) {
  TORCH_CHECK_VALUE(grad_output_.dim() == 4, "grad_output.dim()=", grad_output_.dim(),
                    " expected 4");
  const LSConvGeometry g = make_geometry(input_, weight_, stride, padding, dilation, groups,
                                         {grad_output_.size(2), grad_output_.size(3)});
  const at::Tensor phase = checked_phase(phase_, input_);
  TORCH_CHECK_VALUE(phase.defined() || !output_mask[4],
                    "output_mask[4]=true (the phase's gradient) expected a phase");
  check_like_input(grad_output_, "grad_output", input_);
  const c10::DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK_VALUE(grad_output.size(0) == batch && grad_output.size(1) == out_channels,
                    "grad_output.shape=", grad_output.sizes(), " expected [", batch, ", ",
                    out_channels, ", out_h, out_w]");
  const int64_t col_rows = g.channels * g.kernel_h * g.kernel_w;
  const bool need_input = output_mask[0];
  const bool need_weight = output_mask[1];
  const bool need_phase = output_mask[4];
  // The stride's and the phase's gradients come from one reduction.
  const bool need_stride = output_mask[3] || need_phase;

  // Accumulated in float32 for float16 and bfloat16 inputs.
  const bool low_precision = accumulate_type(input.scalar_type()) != input.scalar_type();
  const bool by_convolution = gemm_as_convolution(input);
  const at::TensorOptions accumulate = input.options().dtype(accumulate_type(input.scalar_type()));
  at::Tensor grad_input = need_input ? at::zeros(input.sizes(), accumulate) : at::Tensor();
  // The 1x1-convolution path takes the first tile's weight gradient as it comes.
  // The fused sampling GEMM computes the weight gradient in one pass of its own, without
  // columns; otherwise each tile's columns product is added.
  const bool fused_weight = need_weight && takes_fused_products(input, g);
  const bool tile_weight = need_weight && !fused_weight;
  at::Tensor grad_weight =
      tile_weight && !by_convolution ? at::zeros(weight.sizes(), accumulate) : at::Tensor();
  at::Tensor grad_bias = output_mask[2]
      ? grad_output.sum(at::IntArrayRef{0, 2, 3}, false, accumulate_type(input.scalar_type()))
      : at::Tensor();
  PreparedStride prepared = prepare_stride(stride, phase, input, g, need_stride);
  prepared.phase_gradient = need_phase;

  const int64_t total_rows = batch * g.out_h;
  if (total_rows > 0 && fused_weight) {
    grad_weight = weight_gradient_fused(grad_output, input, g, prepared, groups, out_channels);
  }
  if (total_rows > 0 && (need_input || tile_weight || need_stride)) {
    const at::Tensor weight_g = weight.view({groups, out_channels / groups, col_rows / groups});
    at::Tensor grad_weight_g =
        grad_weight.defined()
            ? grad_weight.view({groups, out_channels / groups, col_rows / groups})
            : at::Tensor();
    const int64_t step = std::min(tile_rows(g, input), total_rows);
    const at::Tensor columns_buffer =
        tile_weight ? at::empty({col_rows * step * g.out_w}, input.options()) : at::Tensor();
    const bool need_grad_columns = need_input || need_stride;
    const at::Tensor grad_columns_buffer = need_grad_columns && !by_convolution
        ? at::empty({col_rows * step * g.out_w}, accumulate)
        : at::Tensor();
    // (C * kh * kw, O / groups): per group, the transposed weight (1x1 convolution path).
    const at::Tensor weight_t = need_grad_columns && by_convolution
        ? weight_g.transpose(1, 2).contiguous().view({col_rows, out_channels / groups})
        : at::Tensor();
    // The weight gradient's products through oneDNN (4-15% off the backward of r50-s2 and
    // r50-s3, level on det-200) where the weight is no larger than the input: each is a
    // temporary of the weight's size (r50-s4: 9 MiB more at the peak, 1.7x conv2d's).
    // Elsewhere ATen's accumulate in place. The columns gradient's products stay ATen's:
    // oneDNN's ran 15% slower on r50-s3 and r50-s4.
    const bool onednn_weight_gradient = tile_weight && !by_convolution &&
                                        ls_conv_onednn_matmul_cpu(input) &&
                                        weight.numel() <= input.numel();
    at::Tensor grad_output_buffer;  // for tiles whose grad_output cannot be read in place
    for (int64_t begin = 0, end = 0; begin < total_rows; begin = end) {
      end = tile_end(begin, step, g, total_rows);
      const int64_t cols = (end - begin) * g.out_w;
      // grad_output's rows of the tile as (groups, O / groups, cols): read in place when
      // they lie in one image, else copied (the weight gradient sums over the images).
      at::Tensor grad_output_g;
      if (!by_convolution && within_one_image(g, begin, end)) {
        grad_output_g = rows_of_image(grad_output, g, groups, begin, end);
      }
      if (!grad_output_g.defined()) {
        if (!grad_output_buffer.defined()) {
          grad_output_buffer = at::empty({out_channels * step * g.out_w}, input.options());
        }
        const at::Tensor tile = matrix_view(grad_output_buffer, out_channels, cols);
        copy_tile(grad_output, tile, g, begin, end, /*to_tile=*/true);
        grad_output_g = tile.view({groups, out_channels / groups, cols});
      }
      const at::Tensor columns =
          tile_weight ? matrix_view(columns_buffer, col_rows, cols) : at::Tensor();
      if (need_grad_columns) {
        // One pass computes the input and stride gradients and the columns for dw.
        at::Tensor grad_columns;
        if (by_convolution) {  // weight^T @ grad_output, a 1x1 convolution with weight^T
          grad_columns =
              convolve_1x1(grad_output_g.view({out_channels, cols}), weight_t, {}, groups);
        } else {
          grad_columns = matrix_view(grad_columns_buffer, col_rows, cols);
          at::Tensor grad_columns_g = grad_columns.view({groups, col_rows / groups, cols});
          if (low_precision) {
            bmm_float32_out(grad_columns_g, weight_g.transpose(1, 2), grad_output_g);
          } else {
            at::bmm_out(grad_columns_g, weight_g.transpose(1, 2), grad_output_g);
          }
        }
        backward_sampling(grad_columns, input, g, prepared, begin, end, grad_input, need_stride,
                          columns);
      } else {
        im2col(input, g, prepared, begin, end, columns);
      }
      if (tile_weight) {
        if (by_convolution) {  // grad_output @ columns^T, as a 1x1 convolution's weight gradient
          const at::Tensor weight_1x1 = weight.view({out_channels, col_rows / groups, 1, 1});
          const at::Tensor tile_gradient =
              std::get<1>(at::convolution_backward(
                              grad_output_g.view({1, out_channels, 1, cols}),
                              columns.view({1, col_rows, 1, cols}), weight_1x1, nullopt,
                              {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, groups,
                              {false, true, false}))
                  .reshape(weight.sizes());
          grad_weight = grad_weight.defined() ? grad_weight.add_(tile_gradient) : tile_gradient;
          continue;
        }
        const at::Tensor columns_g = columns.view({groups, col_rows / groups, cols});
        if (onednn_weight_gradient) {  // per group, each tile's product added
          for (int64_t group = 0; group < groups; ++group) {
            grad_weight_g.select(0, group).add_(ls_conv_onednn_linear_cpu(
                grad_output_g.select(0, group), columns_g.select(0, group), nullopt));
          }
          continue;
        }
        const at::Tensor columns_t = columns_g.transpose(1, 2);
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
  at::Tensor grad_stride, grad_phase;
  if (need_stride) {
    const at::Tensor& partials = prepared.partials;
    const at::Tensor sums = partials.size(0) == 1 ? partials[0] : partials.sum(0);
    // Copies: views of one tensor would alias each other.
    if (output_mask[3]) grad_stride = sums.narrow(0, 0, 2).to(stride.scalar_type(), false, true);
    if (need_phase) grad_phase = sums.narrow(0, 2, 2).to(phase.scalar_type(), false, true);
  }
  const at::ScalarType dtype = input.scalar_type();
  return {need_input ? grad_input.to(dtype) : grad_input,
          need_weight ? grad_weight.to(dtype) : grad_weight,
          output_mask[2] ? grad_bias.to(dtype) : grad_bias, grad_stride, grad_phase};
}

// Autocast: the op runs in the autocast dtype on CUDA (float16 by default, as
// F.conv2d does) and in float32 on CPU, whose kernels have no low-precision
// path. Input, weight and bias are cast (float64 ones are left alone, as
// autocast does); the stride and the phase keep their dtypes.
template <c10::DeviceType device_type>
at::Tensor ls_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                              const optional<at::Tensor>& bias, const at::Tensor& stride,
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
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 groups, output_size, phase);
}

}  // namespace

TORCH_LIBRARY(mmlstride, m) {
  // phase: an optional (2,) translation of the sampling grid (ls_conv_sampling.h), last so
  // that calls without it keep their form.
  m.def(
      "ls_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor stride, int[2] padding, "
      "int[2] dilation, int groups, SymInt[2] output_size, Tensor? phase=None) -> Tensor");
  // The gradients of (input, weight, bias, stride, phase) where output_mask says so.
  m.def(
      "ls_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor stride, "
      "Tensor? phase, int[2] padding, int[2] dilation, int groups, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
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

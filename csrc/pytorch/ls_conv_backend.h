// What a backend (cpu/, cuda/) gives the device-agnostic driver of the learnable-stride
// convolution (ls_conv.cpp), and the driver each backend's registered kernels call.
//
// The driver checks the arguments, prepares the stride, and runs the batch's output rows
// in tiles of whole rows, numbered globally (row = image * out_h + a; a tile
// [row_begin, row_end) may span several images, or part of one): per tile the backend
// samples the columns, and the backend's TileProducts multiply them. A backend may instead
// take the whole forward or the whole weight gradient by a path of its own. Layouts
// (input: N x C x H x W, contiguous):
//   columns, grad_columns: (C * kernel_h * kernel_w) x ((row_end - row_begin) * out_w),
//     row (c * kernel_h + i) * kernel_w + j, column (row - row_begin) * out_w + b;
//     columns in the dtype of input, grad_columns in the accumulation dtype (that of
//     input, float32 for float16 and bfloat16 input).
//   grad_input: N x C x H x W in the accumulation dtype; the backends add to it.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <memory>
#include <tuple>

#include "../common/ls_conv_sampling.h"
#include "torch_compat.h"

namespace mmlstride {

// The stride and phase as the sampling kernels of one call read them, prepared once per call.
struct PreparedStride {
  // CPU: the values, read from the tensors on the host.
  RealStride values{0.0, 0.0};
  // CUDA: the sampling tables made from the stride on the device, with the stride
  // gradient's scratch (csrc/common/cuda/ls_conv_cuda_launch.cuh): nothing is copied to
  // the host, and an invalid stride stops the tables kernel with a device-side assertion.
  at::Tensor tables;
  // When the stride gradient is wanted: float64 (parts, 4) partial sums of
  // (dL/ds_h, dL/ds_w, dL/dt_h, dL/dt_w), the stride's and the phase's gradients (one
  // reduction: the phase's lacks the output index factor), zero at first and accumulated
  // over tiles; the caller sums the parts. CPU: one row per image plane (N * C, reduced in
  // parallel without atomics); CUDA: one row inside `tables` (each tile's blocks are summed
  // into it in a fixed order).
  at::Tensor partials;
  // Whether the phase's gradient is wanted (set by the caller): without it the backward
  // skips the phase's sums and leaves their partials 0, so that a call without a learned
  // phase does the stride's work alone.
  bool phase_gradient = false;
};

// The dtype in which the columns gradient, the input gradient and the weight gradient are
// computed: float32 for float16 and bfloat16 input.
at::ScalarType accumulate_type(at::ScalarType dtype);

// The matrix products of one call's tiles, per group: weight (groups, O / groups, K / groups)
// and, per tile of `cols` columns, columns (groups, K / groups, cols) and grad_output's rows
// (groups, O / groups, cols), K = C * kernel_h * kernel_w.
class TileProducts {
 public:
  virtual ~TileProducts() = default;

  // Whether the products read and write strided views of the (N, O, out_h, out_w) tensors:
  // then forward writes into `target` (the tile's rows of the output when they lie in one
  // image, else a contiguous buffer), grad_output's rows of a tile within one image are read
  // in place, and columns_gradient writes into `buffer`. Otherwise their targets are
  // undefined, each product is a new tensor, and grad_output's rows are a contiguous copy.
  virtual bool in_place() const = 0;

  // bias + weight @ columns (K, cols): (groups, O / groups, cols) in `target`, or
  // (O, cols) as a new tensor; returned.
  virtual at::Tensor forward(const at::Tensor& columns, const at::Tensor& target) = 0;

  // weight^T @ grad_output_rows, (K, cols) in the accumulation dtype, in `buffer` or new;
  // returned.
  virtual at::Tensor columns_gradient(const at::Tensor& grad_output_rows,
                                      const at::Tensor& buffer) = 0;

  // Adds grad_output_rows @ columns^T to the weight gradient.
  virtual void add_weight_gradient(const at::Tensor& grad_output_rows,
                                   const at::Tensor& columns) = 0;

  // The weight gradient summed over the tiles, (O, C / groups, kernel_h, kernel_w) in the
  // accumulation dtype (zeros when no tile was added).
  virtual at::Tensor weight_gradient() = 0;
};

// The products by ATen's batched matrix products, float16 and bfloat16 ones accumulated
// and returned in float32.
std::unique_ptr<TileProducts> batched_products(const at::Tensor& weight,
                                               const optional<at::Tensor>& bias, int64_t groups);

// The products as 1x1 convolutions (at::convolution on (1, K, 1, cols) views), so that
// float32 ones follow torch.backends.cudnn.allow_tf32 on CUDA, as F.conv2d does.
std::unique_ptr<TileProducts> convolution_products(const at::Tensor& weight,
                                                   const optional<at::Tensor>& bias,
                                                   int64_t groups);

// One device's sampling kernels and choices of products.
class LSConvBackend {
 public:
  virtual ~LSConvBackend() = default;

  // A TypeError unless input's dtype has kernels on this backend.
  virtual void check_dtype(const at::Tensor& input) const = 0;

  // Target size of a tile's columns buffer (see tile_rows in ls_conv.cpp).
  virtual int64_t tile_bytes() const = 0;

  // Reads or tabulates the stride and the phase (undefined when absent) for the kernels,
  // checking their values (finite, the stride > 0); with `stride_gradient`, also the
  // partials of their gradients, zeroed.
  virtual PreparedStride prepare(const at::Tensor& stride, const at::Tensor& phase,
                                 const at::Tensor& input, const LSConvGeometry& geometry,
                                 bool stride_gradient) const = 0;

  // columns <- bilinear samples of `input` at every (tap, output pixel) of the tile.
  virtual void im2col(const at::Tensor& input, const LSConvGeometry& geometry,
                      const PreparedStride& stride, int64_t row_begin, int64_t row_end,
                      const at::Tensor& columns) const = 0;

  // From the gradient of the tile's columns: adds their scatter onto the input to
  // grad_input and, when `stride_gradient`, their stride- and phase-gradient contributions
  // to stride.partials, and writes the tile's columns (as im2col) to `columns`, each only
  // when defined; grad_input must be, or stride_gradient true.
  virtual void backward_sampling(const at::Tensor& grad_columns, const at::Tensor& input,
                                 const LSConvGeometry& geometry, const PreparedStride& stride,
                                 int64_t row_begin, int64_t row_end,
                                 const at::Tensor& grad_input, bool stride_gradient,
                                 const at::Tensor& columns) const = 0;

  // The tile products for this call: weight (O, C / groups, kernel_h, kernel_w) and bias
  // contiguous; `input` says the dtype and device, `weight_gradient` whether the weight
  // gradient will be asked of them.
  virtual std::unique_ptr<TileProducts> products(const at::Tensor& input,
                                                 const at::Tensor& weight,
                                                 const optional<at::Tensor>& bias,
                                                 int64_t groups, bool weight_gradient) const = 0;

  // The whole forward into `output` (N, O, out_h, out_w), contiguous, by the backend's own
  // path, returning true; false to take the tiles.
  virtual bool forward_whole(const at::Tensor& input, const at::Tensor& weight,
                             const optional<at::Tensor>& bias, const LSConvGeometry& geometry,
                             const PreparedStride& stride, int64_t groups,
                             at::Tensor& output) const {
    (void)input, (void)weight, (void)bias, (void)geometry, (void)stride, (void)groups;
    (void)output;
    return false;
  }

  // The whole weight gradient in the accumulation dtype by the backend's own path, or an
  // undefined tensor to take the tiles' products.
  virtual at::Tensor weight_gradient_whole(const at::Tensor& grad_output,
                                           const at::Tensor& input,
                                           const LSConvGeometry& geometry,
                                           const PreparedStride& stride,
                                           int64_t groups) const {
    (void)grad_output, (void)input, (void)geometry, (void)stride, (void)groups;
    return at::Tensor();
  }
};

// The op mmlstride::ls_conv2d on `backend` (schema in ls_conv.cpp).
at::Tensor ls_conv2d_forward(const LSConvBackend& backend, const at::Tensor& input,
                             const at::Tensor& weight, const at::Tensor& stride,
                             const optional<at::Tensor>& bias, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef output_size, const optional<at::Tensor>& phase);

// The op mmlstride::ls_conv2d_backward on `backend`: the gradients of (input, weight,
// stride, bias, phase) asked for by output_mask (undefined where not).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ls_conv2d_backward(
    const LSConvBackend& backend, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, const at::Tensor& stride, const optional<at::Tensor>& phase,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 5> output_mask);

// The op's kernels on a backend of class Backend, as each backend registers them
// (TORCH_LIBRARY_IMPL).
template <class Backend>
at::Tensor ls_conv2d_kernel(const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& stride, const optional<at::Tensor>& bias,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            at::IntArrayRef output_size, const optional<at::Tensor>& phase) {
  static const Backend backend;
  return ls_conv2d_forward(backend, input, weight, stride, bias, padding, dilation, groups,
                           output_size, phase);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ls_conv2d_backward_kernel(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& stride, const optional<at::Tensor>& phase, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, std::array<bool, 5> output_mask) {
  static const Backend backend;
  return ls_conv2d_backward(backend, grad_output, input, weight, stride, phase, padding,
                            dilation, groups, output_mask);
}

}  // namespace mmlstride

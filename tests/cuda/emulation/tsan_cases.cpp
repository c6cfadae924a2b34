// Runs the emulated CUDA kernels (emulated_kernels.cpp, through cuda_emulation.h) over a
// representative set of calls, for a build with -fsanitize=thread: the launch layer's
// backward of two tiles of several blocks each for every variant of the gradients asked for,
// by the atomic scatter and by the deterministic gather of the input gradient, in every
// dtype and both index widths; im2col tiles; the tables kernel; the sum of many blocks'
// partials; the fused sampling GEMMs (forward and weight gradient) on a geometry of several
// reduction steps and channel tiles. Each call runs under two schedules (seeds, 4 workers); with the argument `quick`,
// under one, in float and 32-bit indices alone (the fused GEMMs: float and half, for the
// tensor cores' staging), for the planted races. The results are not
// checked here (tests/cuda/test_cuda_kernels_emulated.py does that): ThreadSanitizer's reports
// are the output, and its exit status (66 when it reported) the verdict.
//
//   c++ -std=c++20 -O1 -g -fsanitize=thread -pthread -I<cuda>/include -I. -I<repo>/csrc
//       emulated_kernels.cpp tsan_cases.cpp -o tsan_cases && ./tsan_cases
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

extern "C" {
void emulated_schedule(unsigned seed, int workers);
int emulated_backward_tile(int dtype, int want, int deterministic, int multiprocessors,
                           const void* grad_columns, const void* input, int64_t input_numel,
                           const int64_t* geometry, const double* stride, const double* phase,
                           int64_t row_begin, int64_t row_end, int tiles, void* grad_input,
                           double* stride_sum, void* columns, int64_t* record, int capacity);
int emulated_im2col_tile(int dtype, int multiprocessors, const void* input, int64_t input_numel,
                         const int64_t* geometry, const double* stride, const double* phase,
                         int64_t row_begin, int64_t row_end, void* columns, int64_t* record,
                         int capacity);
int emulated_tables(int acc_dtype, int stride_dtype, const void* stride, const void* phase,
                    const int64_t* geometry, double* h, double* w, int64_t* h_sources,
                    int64_t* w_sources, int64_t* row_reach);
int emulated_sum_partials(int dtype, const void* partials, int64_t blocks, double* stride_sum);
int emulated_forward_fused(int dtype, int multiprocessors, const void* input, int64_t input_numel,
                           const void* weight, const void* bias, const int64_t* geometry,
                           int64_t batch, int64_t out_channels, int64_t groups,
                           const double* stride, const double* phase, void* output,
                           int64_t* record, int capacity);
void emulated_weight_gradient_split(const int64_t* geometry, int64_t batch, int64_t out_channels,
                                    int64_t groups, int element_bytes, int multiprocessors,
                                    int64_t* split);
int emulated_weight_gradient_fused(int dtype, int multiprocessors, const void* grad_output,
                                   const void* input, int64_t input_numel,
                                   const int64_t* geometry, int64_t batch, int64_t out_channels,
                                   int64_t groups, const double* stride, const double* phase,
                                   void* partial, int64_t* record, int capacity);
}

namespace {

// batch 2, channels 2, 13 x 11 input, 3 x 3 taps, padding 1, dilation 1, 8 x 8 output:
// a tile of half the 16 output rows has 2 * 9 * 64 columns elements, 5 blocks of 256.
constexpr int64_t kBatch = 2;
const int64_t kGeometry[11] = {2, 13, 11, 3, 3, 1, 1, 1, 1, 8, 8};
constexpr int64_t kInputElements = kBatch * 2 * 13 * 11;
constexpr int64_t kRows = kBatch * 8;
constexpr int64_t kColumnElements = 2 * 9 * kRows * 8;
const int kSizes[4] = {4, 8, 2, 2};  // float, double, half, bfloat16
// The fused GEMMs: 8 channels of 3 x 3 taps (a reduction of 72: three steps, five in
// float64), 70 output channels (two tiles), 128 output pixels over the batch of 2.
const int64_t kFusedGeometry[11] = {8, 13, 11, 3, 3, 1, 1, 1, 1, 8, 8};
constexpr int64_t kFusedOutChannels = 70;
const int kWants[] = {1, 2, 3, 5, 6, 7, 10, 11, 14, 15};  // input 1, stride 2, columns 4, phase 8

std::vector<unsigned char> random_bytes(size_t bytes, std::mt19937& random) {
  // Small integers in each element's low bytes: finite in every dtype.
  std::vector<unsigned char> data(bytes);
  for (unsigned char& byte : data) byte = static_cast<unsigned char>(random() % 32);
  return data;
}

std::vector<double> random_doubles(size_t count, std::mt19937& random) {
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::vector<double> data(count);
  for (double& value : data) value = uniform(random);
  return data;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "quick") == 0;
  std::mt19937 random(0);
  const double stride[2] = {1.37, 1.21};
  const double phase[2] = {0.3, -0.45};
  int calls = 0;
  int failures = 0;
  for (unsigned seed = 0; seed < (quick ? 1u : 2u); ++seed) {
    emulated_schedule(seed, 4);
    for (int dtype = 0; dtype < (quick ? 1 : 4); ++dtype) {
      const int acc_size = dtype == 1 ? 8 : 4;
      // 32- and 64-bit indices (half and bfloat16: 32-bit alone, their index code is shared).
      for (int64_t input_numel : {kInputElements, int64_t(1) << 32}) {
        if (input_numel != kInputElements && (quick || dtype >= 2)) continue;
        for (int want : kWants) {
          // The gather of the input gradient (deterministic) where it is asked for.
          for (int deterministic = 0; deterministic < 1 + (want & 1); ++deterministic) {
            std::vector<double> grad_columns = random_doubles(kColumnElements, random);
            std::vector<float> grad_columns_float(grad_columns.begin(), grad_columns.end());
            const void* grad = dtype == 1 ? static_cast<const void*>(grad_columns.data())
                                          : grad_columns_float.data();
            std::vector<unsigned char> input = random_bytes(kInputElements * kSizes[dtype], random);
            std::vector<unsigned char> grad_input(kInputElements * acc_size, 0);
            std::vector<unsigned char> columns(kColumnElements * kSizes[dtype], 0);
            double stride_sum[4] = {};
            std::vector<int64_t> record(4 * 64);
            const int launches = emulated_backward_tile(
                dtype, want, deterministic, 1, grad, input.data(), input_numel, kGeometry,
                stride, want & 8 ? phase : nullptr, 0, kRows, 2, grad_input.data(), stride_sum,
                want & 4 ? columns.data() : nullptr, record.data(), 64);
            failures += launches <= 0;
            ++calls;
          }
        }
        std::vector<unsigned char> input = random_bytes(kInputElements * kSizes[dtype], random);
        std::vector<unsigned char> columns(kColumnElements * kSizes[dtype], 0);
        std::vector<int64_t> record(4 * 64);
        failures += emulated_im2col_tile(dtype, 1, input.data(), input_numel, kGeometry, stride,
                                         phase, 3, kRows - 2, columns.data(), record.data(),
                                         64) <= 0;
        ++calls;
      }
    }
    for (int dtype = 0; dtype < 4; ++dtype) {
      if (quick && dtype != 0 && dtype != 2) continue;
      const int acc_size = dtype == 1 ? 8 : 4;
      for (int64_t input_numel : {kBatch * 8 * 13 * 11, int64_t(1) << 32}) {
        if (input_numel != kBatch * 8 * 13 * 11 && quick) continue;
        std::vector<unsigned char> input = random_bytes(kBatch * 8 * 13 * 11 * kSizes[dtype], random);
        std::vector<unsigned char> weight =
            random_bytes(kFusedOutChannels * 8 * 9 * kSizes[dtype], random);
        std::vector<unsigned char> bias = random_bytes(kFusedOutChannels * kSizes[dtype], random);
        std::vector<unsigned char> output(kBatch * kFusedOutChannels * 64 * kSizes[dtype], 0);
        std::vector<int64_t> record(4 * 64);
        failures += emulated_forward_fused(dtype, 1, input.data(), input_numel, weight.data(),
                                           bias.data(), kFusedGeometry, kBatch,
                                           kFusedOutChannels, 1, stride, phase, output.data(),
                                           record.data(), 64) <= 0;
        ++calls;
        int64_t split[2];
        emulated_weight_gradient_split(kFusedGeometry, kBatch, kFusedOutChannels, 1,
                                       kSizes[dtype], 1, split);
        std::vector<unsigned char> partial(split[0] * kFusedOutChannels * 8 * 9 * acc_size, 0);
        failures += emulated_weight_gradient_fused(dtype, 1, output.data(), input.data(),
                                                   input_numel, kFusedGeometry, kBatch,
                                                   kFusedOutChannels, 1, stride, phase,
                                                   partial.data(), record.data(), 64) <= 0;
        ++calls;
      }
    }
    for (int acc_dtype = 0; acc_dtype < 2; ++acc_dtype) {
      std::vector<double> h(4 * 3 * 8), w(4 * 3 * 8);
      std::vector<int64_t> h_sources(2 * 3 * 13), w_sources(2 * 3 * 11), row_reach(2 * 8);
      failures += emulated_tables(acc_dtype, 1, stride, phase, kGeometry, h.data(), w.data(),
                                  h_sources.data(), w_sources.data(), row_reach.data()) != 0;
      ++calls;
    }
    for (int dtype = 0; dtype < 2; ++dtype) {
      const int64_t blocks = 700;  // several partials per thread of the summing block
      std::vector<double> partials = random_doubles(4 * blocks, random);
      std::vector<float> partials_float(partials.begin(), partials.end());
      double stride_sum[4] = {};
      failures += emulated_sum_partials(dtype, dtype ? static_cast<const void*>(partials.data())
                                                     : partials_float.data(),
                                        blocks, stride_sum) != 0;
      ++calls;
    }
  }
  std::printf("%d calls, %d failed\n", calls, failures);
  return failures ? 1 : 0;
}

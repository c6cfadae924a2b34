// A CPU stand-in for the parts of the CUDA execution model that the kernels of
// csrc/common/cuda use, so that their logic (indexing, grid-stride loops, the
// block reduction, atomics, dtype conversions) runs in the test suite on
// machines without a GPU: tests/test_cuda_kernels_emulated.py. Device-side
// assertions (LSCONV_ASSERT_FAIL) are recorded in emulation::assertion.
//
// Blocks run one after another; the threads of a block run as std::threads
// that meet at __syncthreads() on a barrier, so __shared__ arrays (static
// locals here) are shared by one block at a time, as on a GPU. Include it
// before the kernel header; launch with emulated_launch(grid, block, kernel, args...).
#pragma once

// The toolkit headers the kernels include, first: they define the CUDA keywords
// (replaced below) and use gridDim and blockDim as parameter names.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <atomic>
#include <barrier>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(threads)
#define __shared__ static

namespace emulation {
inline thread_local uint3 thread_index;
inline thread_local uint3 block_index;
inline uint3 grid_dim;
inline uint3 block_dim;
inline std::barrier<>* block_barrier = nullptr;
}  // namespace emulation

#define threadIdx (emulation::thread_index)
#define blockIdx (emulation::block_index)
#define blockDim (emulation::block_dim)
#define gridDim (emulation::grid_dim)

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}

inline double atomicAdd(double* address, double value) {
  return std::atomic_ref<double>(*address).fetch_add(value);
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}

// Blocks run one after another here, so their writes are already ordered.
inline void __threadfence() {}

// A device-side assertion is recorded rather than fatal, for the tests to read.
namespace emulation {
inline std::atomic<const char*> assertion{nullptr};
}  // namespace emulation
#define LSCONV_ASSERT_FAIL(message) (emulation::assertion = (message))

// kernel<<<grid, block>>>(args...) on one-dimensional grids and blocks.
template <typename Kernel, typename... Args>
void emulated_launch(unsigned grid, unsigned block, Kernel kernel, Args... args) {
  emulation::grid_dim = uint3{grid, 1, 1};
  emulation::block_dim = uint3{block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    emulation::block_barrier = &barrier;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([=] {
        emulation::block_index = uint3{b, 0, 0};
        emulation::thread_index = uint3{t, 0, 0};
        kernel(args...);
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
  emulation::block_barrier = nullptr;
}

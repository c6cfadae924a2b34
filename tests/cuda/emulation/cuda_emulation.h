// A CPU stand-in for the parts of the CUDA execution model that the kernels of
// csrc/common/cuda use, so that their logic (indexing, grid-stride loops, the block
// reduction, the cooperation of blocks through atomics and fences, dtype conversions) runs
// in the test suite on machines without a GPU: tests/cuda/test_cuda_kernels_emulated.py, and
// under ThreadSanitizer tests/cuda/emulation/tsan_cases.cpp. Device-side assertions
// (LSCONV_ASSERT_FAIL) are recorded in emulation::assertion. Include it before the kernel
// header; launch with emulated_launch(grid, block, kernel, args...).
//
// Blocks run at once: a launch hands its blocks, in an order shuffled by the seed
// (emulation::schedule), to a pool of worker threads (4 by default), each running whole
// blocks. The threads of a block are fibers (ucontext) on its worker, as in HIP-CPU: each
// runs until it reaches __syncthreads() or returns, and in each phase between two barriers
// the block's threads run in an order shuffled by the seed. __shared__ variables are
// thread_local, so each worker's copy belongs to the block it runs.
//
// Memory semantics are CUDA's, not stronger ones: atomicAdd and atomicExch are relaxed
// (CUDA's atomics order nothing by themselves); __threadfence() is a device-wide fence;
// __syncthreads() is a block barrier that orders the memory accesses of the block's
// threads. Under ThreadSanitizer the fibers switch without telling it of any ordering
// (__tsan_switch_to_fiber_no_sync), so that two threads of a block are ordered only by the
// barriers between them, and two blocks only by fences around atomics, or by running one
// after the other on one worker (the worker's own context sees each fiber it leaves, and
// starts the next block's fibers from there).
#pragma once

// The toolkit headers the kernels include, first: they define the CUDA keywords
// (replaced below) and use gridDim and blockDim as parameter names.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define LSCONV_EMULATION_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LSCONV_EMULATION_TSAN 1
#endif
#endif
#ifdef LSCONV_EMULATION_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(threads)
#define __shared__ static thread_local

namespace emulation {

// The schedule: worker threads per launch, and the seed of the block order and of the
// order of a block's threads in each phase (each launch draws from it in turn).
inline std::atomic<unsigned> seed{0};
inline std::atomic<int> workers{4};

inline void schedule(unsigned new_seed, int new_workers) {
  seed = new_seed;
  workers = std::max(1, new_workers);
}

inline uint3 grid_dim;
inline uint3 block_dim;

// One thread of a block. Fields the worker's context and the fiber both touch are atomics
// (relaxed: the switches themselves order them), so that ThreadSanitizer does not take the
// stand-in's own bookkeeping for the kernels' races.
struct Fiber {
  ucontext_t context;
  void* tsan = nullptr;
  std::atomic<bool> done{false};
};

// A worker's block: the fibers of its threads, their stacks, and what orders them. The
// fibers live as long as the worker (ThreadSanitizer's cost grows with the fibers ever made)
// and restart at the kernel's entry for each block.
struct Block {
  static constexpr size_t kStackBytes = 256 * 1024;

  explicit Block(unsigned threads) : fibers(threads) {
    stacks_bytes = kStackBytes * threads;
    void* memory = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) std::abort();
    stacks = static_cast<char*>(memory);
#ifdef LSCONV_EMULATION_TSAN
    for (Fiber& fiber : fibers) fiber.tsan = __tsan_create_fiber(0);
#endif
  }
  ~Block() {
#ifdef LSCONV_EMULATION_TSAN
    for (Fiber& fiber : fibers) __tsan_destroy_fiber(fiber.tsan);
#endif
    munmap(stacks, stacks_bytes);
  }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
  ucontext_t worker;  // the worker's own context, which schedules the fibers
  void* worker_tsan = nullptr;
  const std::function<void()>* body = nullptr;
  std::atomic<unsigned> current{0};  // the running thread
  std::atomic<unsigned> phase{0};    // barriers passed
  // For ThreadSanitizer: the worker releases into block_start what it has seen (the previous
  // blocks' fibers, the launch) and each fiber acquires it as it starts a block. The arrivals
  // at a barrier release into the slot of the phase's parity and its departures acquire from
  // it; a thread that has left a barrier and reached the next one releases into the other
  // slot, so a slower thread leaving the first barrier does not acquire what it did since.
  std::atomic<unsigned> block_start{0};
  std::atomic<unsigned> barrier_sync[2] = {0, 0};
};

// The worker's block, and threadIdx.x and blockIdx.x of its running fiber: set by the worker,
// read by the fibers.
inline thread_local std::atomic<Block*> running_block{nullptr};
inline thread_local std::atomic<unsigned> thread_x{0};
inline thread_local std::atomic<unsigned> block_x{0};

inline uint3 thread_index() { return uint3{thread_x.load(std::memory_order_relaxed), 0, 0}; }
inline uint3 block_index() { return uint3{block_x.load(std::memory_order_relaxed), 0, 0}; }

// From a fiber back to its worker, telling ThreadSanitizer that the worker has seen what the
// fiber did (the worker passes none of it on to the next fiber it resumes).
inline void switch_to_worker(Block* block) {
  Fiber& fiber = block->fibers[block->current.load(std::memory_order_relaxed)];
#ifdef LSCONV_EMULATION_TSAN
  __tsan_switch_to_fiber(block->worker_tsan, 0);
#endif
  swapcontext(&fiber.context, &block->worker);
}

inline void fiber_main() {
  Block* block = running_block.load(std::memory_order_relaxed);
  block->block_start.load(std::memory_order_acquire);
  (*block->body)();
  block->fibers[block->current.load(std::memory_order_relaxed)].done = true;
  switch_to_worker(block);  // not resumed: the next block restarts the fiber
}

// Runs block `index` of a launch: its threads as fibers on this worker, phase by phase.
inline void run_block(Block& block, unsigned index, const std::function<void()>& body,
                      std::mt19937& random) {
  const unsigned threads = unsigned(block.fibers.size());
  running_block = &block;
  block_x = index;
  block.body = &body;
  block.phase = 0;
#ifdef LSCONV_EMULATION_TSAN
  block.worker_tsan = __tsan_get_current_fiber();
#endif
  block.block_start.fetch_add(1, std::memory_order_release);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& fiber = block.fibers[t];
    fiber.done = false;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = block.stacks + size_t(t) * Block::kStackBytes;
    fiber.context.uc_stack.ss_size = Block::kStackBytes;
    fiber.context.uc_link = nullptr;
    makecontext(&fiber.context, fiber_main, 0);
  }
  std::vector<unsigned> ready;
  ready.reserve(threads);
  while (true) {
    // Every live thread has reached the barrier or started (threads that have returned no
    // longer count, as on GPUs since Volta): the next phase, in a shuffled order.
    ready.clear();
    for (unsigned t = 0; t < threads; ++t) {
      if (!block.fibers[t].done) ready.push_back(t);
    }
    if (ready.empty()) break;
    std::shuffle(ready.begin(), ready.end(), random);
    for (unsigned t : ready) {
      block.current = t;
      thread_x = t;
#ifdef LSCONV_EMULATION_TSAN
      __tsan_switch_to_fiber(block.fibers[t].tsan, __tsan_switch_to_fiber_no_sync);
#endif
      swapcontext(&block.worker, &block.fibers[t].context);
    }
    block.phase.fetch_add(1, std::memory_order_relaxed);
  }
  running_block = nullptr;
}

// The worker threads, kept from launch to launch, and the launch they are running.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

  // Runs `grid` blocks of `threads` threads on `workers` workers; returns when all are done
  // (the mutex orders the launch before the blocks and the blocks before the return).
  void launch(unsigned grid, unsigned threads, unsigned workers, unsigned launch_seed,
              const std::function<void()>& body) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (threads_.size() < workers) {
      const unsigned w = unsigned(threads_.size());
      threads_.emplace_back([this, w] { work(w); });
    }
    order_.resize(grid);
    std::iota(order_.begin(), order_.end(), 0u);
    std::mt19937 random(launch_seed);
    std::shuffle(order_.begin(), order_.end(), random);
    grid_ = grid;
    threads_per_block_ = threads;
    participants_ = workers;
    launch_seed_ = launch_seed;
    body_ = &body;
    next_ = 0;
    active_ = workers;
    ++generation_;
    wake_.notify_all();
    finished_.wait(lock, [this] { return active_ == 0; });
  }

 private:
  void work(unsigned w) {
    std::unique_ptr<Block> block;
    unsigned seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (w >= participants_) continue;
      const unsigned grid = grid_, threads = threads_per_block_;
      const std::function<void()>& body = *body_;
      std::mt19937 random(launch_seed_ * 7919u + w);
      lock.unlock();
      if (!block || block->fibers.size() != threads) block = std::make_unique<Block>(threads);
      for (unsigned k; (k = next_.fetch_add(1)) < grid;) run_block(*block, order_[k], body, random);
      lock.lock();
      if (--active_ == 0) finished_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::vector<std::thread> threads_;
  std::vector<unsigned> order_;
  const std::function<void()>* body_ = nullptr;
  unsigned grid_ = 0, threads_per_block_ = 0, participants_ = 0, launch_seed_ = 0;
  unsigned active_ = 0, generation_ = 0;
  std::atomic<unsigned> next_{0};
  bool stop_ = false;
};

// One launch: its blocks, in an order shuffled by the seed, on a pool of workers.
inline void run_launch(unsigned grid, unsigned threads, const std::function<void()>& body) {
  static Pool pool;
  grid_dim = uint3{grid, 1, 1};
  block_dim = uint3{threads, 1, 1};
  const unsigned launch_seed = seed.fetch_add(1);
  pool.launch(grid, threads, std::max(1u, std::min(unsigned(workers.load()), grid)),
              launch_seed, body);
}

}  // namespace emulation

#define threadIdx (emulation::thread_index())
#define blockIdx (emulation::block_index())
#define blockDim (emulation::block_dim)
#define gridDim (emulation::grid_dim)

// A block barrier: the thread waits until every live thread of its block has arrived. What
// it orders is told to ThreadSanitizer through the block's barrier_sync (see Block).
inline void __syncthreads() {
  emulation::Block* block = emulation::running_block.load(std::memory_order_relaxed);
  std::atomic<unsigned>& sync = block->barrier_sync[block->phase.load() % 2];
  sync.fetch_add(1, std::memory_order_release);
  emulation::switch_to_worker(block);
  sync.load(std::memory_order_acquire);
}

// CUDA's atomics are relaxed: they order no other memory access.
inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline double atomicAdd(double* address, double value) {
  return std::atomic_ref<double>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline unsigned int atomicExch(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).exchange(value, std::memory_order_relaxed);
}

// CUDA's __threadfence(): this thread's memory accesses before it are seen by every thread of
// the device before those after it. A sequentially consistent fence does that here; but
// ThreadSanitizer does not model std::atomic_thread_fence, so every fence is also an
// acquire-release read-modify-write of one atomic, which it does model: a fence then
// synchronises with every fence before it. That is a little stronger than CUDA's fence,
// which orders through the atomics around it, but the pattern that needs it (writes, fence,
// then an atomic another block reads, then that block's fence, then its reads) is ordered
// exactly when both fences are there, and not when either is missing.
namespace emulation {
inline std::atomic<unsigned> fence_sync{0};
}  // namespace emulation

inline void __threadfence() {
#ifndef LSCONV_EMULATION_TSAN  // which warns that it ignores it
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  emulation::fence_sync.fetch_add(1, std::memory_order_acq_rel);
}

// A device-side assertion is recorded rather than fatal, for the tests to read.
namespace emulation {
inline std::atomic<const char*> assertion{nullptr};
}  // namespace emulation
#define LSCONV_ASSERT_FAIL(message) (emulation::assertion = (message))

// The warp matrix functions (nvcuda::wmma) that the fused kernels use: 16 x 16 x 16
// fragments of float16 or bfloat16 operands with float accumulators, loaded from and stored
// to memory in row-major order. As on a GPU, each is called by all 32 threads of a warp
// (warp = threadIdx.x / 32) and an accumulator is spread over them: lane l holds the
// elements whose row-major index is l modulo 32, and mma_sync computes those alone. An
// operand fragment holds the whole matrix in every lane (on a GPU the warp shares it among
// its lanes inside mma_sync). Products are exact in float and summed in k order (a tensor
// core's order and rounding inside one product are unspecified: the tests allow for it).
// CUDA's preconditions are checked and a violation recorded in emulation::assertion: a
// pointer 256-bit aligned, ldm a multiple of 16 bytes. The _sync functions do not wait for
// the warp's other lanes here (as a GPU does): a kernel must not rely on them to order its
// memory accesses, and the emulation's schedule would show it if it did.
#define LSCONV_EMULATED_WMMA 1
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline unsigned lane() { return emulation::thread_index().x % 32; }

template <typename Element>
inline void check_matrix_pointer(const Element* pointer, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0) {
    emulation::assertion = "wmma: the matrix pointer is not 256-bit aligned";
  }
  if (ldm * sizeof(Element) % 16 != 0) {
    emulation::assertion = "wmma: ldm is not a multiple of 16 bytes";
  }
}

template <typename Use, int m, int n, int k, typename Element, typename Layout = void>
struct fragment;

// An operand: the whole 16 x 16 matrix, as floats (float16 and bfloat16 convert exactly).
template <typename Use, typename Element>
struct fragment<Use, 16, 16, 16, Element, row_major> {
  float values[16 * 16];
};

// An accumulator: this lane's share, element e = row * 16 + column at e / 32.
template <>
struct fragment<accumulator, 16, 16, 16, float, void> {
  float values[16 * 16 / 32];
};

using Accumulator = fragment<accumulator, 16, 16, 16, float, void>;

inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, typename Element>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, Element, row_major>& f,
                             const Element* pointer, unsigned ldm) {
  check_matrix_pointer(pointer, ldm);
  for (int row = 0; row < 16; ++row) {
    for (int column = 0; column < 16; ++column) {
      f.values[row * 16 + column] = to_float(pointer[row * ldm + column]);
    }
  }
}

inline void fill_fragment(Accumulator& f, float value) {
  for (float& v : f.values) v = value;
}

// d = a b + c, this lane's elements of d.
template <typename Element>
inline void mma_sync(Accumulator& d, const fragment<matrix_a, 16, 16, 16, Element, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, Element, row_major>& b,
                     const Accumulator& c) {
  for (int e = 0; e < 16 * 16 / 32; ++e) {
    const int index = int(lane()) + 32 * e;
    const int row = index / 16, column = index % 16;
    float sum = c.values[e];
    for (int k = 0; k < 16; ++k) sum += a.values[row * 16 + k] * b.values[k * 16 + column];
    d.values[e] = sum;
  }
}

inline void store_matrix_sync(float* pointer, const Accumulator& f, unsigned ldm,
                              layout_t layout) {
  check_matrix_pointer(pointer, ldm);
  for (int e = 0; e < 16 * 16 / 32; ++e) {
    const int index = int(lane()) + 32 * e;
    const int row = index / 16, column = index % 16;
    if (layout == mem_row_major) {
      pointer[row * ldm + column] = f.values[e];
    } else {
      pointer[column * ldm + row] = f.values[e];
    }
  }
}

}  // namespace wmma
}  // namespace nvcuda

// kernel<<<grid, block>>>(args...) on one-dimensional grids and blocks.
template <typename Kernel, typename... Args>
void emulated_launch(unsigned grid, unsigned block, Kernel kernel, Args... args) {
  const std::function<void()> body = [=] { kernel(args...); };
  emulation::run_launch(grid, block, body);
}

// Stand-in for the header that CUDA builds of torch generate at build time and
// CPU-only wheels lack (c10/cuda/impl/cuda_cmake_macros.h.in in PyTorch), so
// that the launchers compile against a CPU wheel's headers on machines without
// CUDA torch (tests/cuda/test_cuda_kernels_compile.py). Not used by real builds.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS

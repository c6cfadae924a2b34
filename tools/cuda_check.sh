#!/usr/bin/env bash
# The CUDA checks, on a machine with a GPU, a CUDA build of torch and nvcc: builds
# mmlstride with its CUDA kernels in place, runs the device-parametrised tests
# (CUDA cases included), the accuracy sweep on the GPU, the kernel launches per
# forward+backward, and the op benchmark in
# float32 and bfloat16 against cuDNN, torchvision's deform conv and pure PyTorch.
# Logs go to $OUT (default work_dirs/cuda_check). Uses the python3 it finds;
# mmengine must be importable. On the lent GPU machines (torch, pytest, numpy,
# pyyaml, rich, opencv and torchvision there; no network) carry these wheels,
# fetched here with the device tool's pip download recipe into .whl/:
#   mmengine==0.10.7 addict yapf platformdirs termcolor
#   TORCH_CUDA_ARCH_LIST=9.0 bash tools/cuda_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-work_dirs/cuda_check}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-8} "$python" setup.py build_ext --inplace 2>&1 \
  | tail -n 20 | tee "$out/build.log"
"$python" -c "import torch, mmlstride.ops.extension as e; assert e.has_kernel(torch.device('cuda'))"
set +e
"$python" -m pytest -q -rs tests/test_cuda.py tests/test_autocast.py tests/test_oracles.py \
  tests/test_torch_library.py tests/test_errors.py 2>&1 | tee "$out/pytest.log" | tail -n 30
status=${PIPESTATUS[0]}
set -e
"$python" tools/check_accuracy.py --device cuda --cases 100 2>&1 | tee "$out/accuracy.txt"
"$python" tools/count_launches.py --device cuda 2>&1 | tee "$out/launches.txt"
"$python" tools/benchmark_op.py --device cuda --dtype float32 bfloat16 --warmup 10 --repeats 50 \
  --json "$out/benchmark_op.json" --png "$out/benchmark_op.png" 2>&1 | tee "$out/benchmark.txt"
exit "$status"

#!/usr/bin/env bash
# The CUDA checks, as one command on a machine with a GPU, a CUDA build of torch and nvcc,
# sized for about 9 minutes on 16 cores (steps 1-6 about 7, the speed steps about 2-3):
#   1. environment: GPU, driver, CUDA, torch (environment.txt);
#   2. build: the extension in place, for the visible GPU's architecture only (build.log);
#   3. tests: the CUDA tests and the device-parametrised ones (pytest.log; tests that need
#      mmcv or mmdet skip where those are missing);
#   4. compute-sanitizer memcheck, racecheck, synccheck and initcheck on small calls that
#      launch every kernel and backward variant (tools/cuda_sanitizer_cases.py; sanitizer.log);
#   5. accuracy against the float64 and CPU references (accuracy.log);
#   6. kernel launches per forward+backward (launches.log);
#   7. speed against cuDNN, torchvision's deform conv and pure PyTorch: float32 with TF32
#      off and on, bfloat16, ResNet-50's strided layers at batch 32 and a detection-size map,
#      CUDA events, eager and replayed from CUDA graphs (benchmark.log);
#   8. fixed grids: the op against its pooling-and-convolution form and cuDNN's conv
#      (fixed_grid.log);
#   9. a ResNet-50 backbone's training step at 2 x 3 x 800 x 1333, plain against LSConv's
#      default and learned strides, float32 and bfloat16 autocast (backbone.log).
# Each step has a time limit; a failed or timed-out step is reported and the next runs.
# Logs go to $OUT (default work_dirs/cuda_check), a summary table to summary.txt and last
# on stdout. Exit status: 0 when every step passed.
#
#   bash tools/cuda_check.sh             # on the GPU machine
#   bash tools/cuda_check.sh --speed     # there: steps 1, 2 and 7-9 only (a second call)
#   bash tools/cuda_check.sh --dry-run   # anywhere: the steps up to the build and the speed
#                                        # steps at toy sizes on the CPU, then stops
#
# Uses $PYTHON (default python3); mmengine must be importable. On a machine without network
# (torch, torchvision, pytest, numpy, pyyaml, rich and opencv there), carry these wheels:
#   mmengine==0.10.7 addict yapf platformdirs termcolor
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
speed_only=0
case "${1:-}" in
  '') ;;
  --dry-run) dry_run=1 ;;
  --speed) speed_only=1 ;;
  *) echo "usage: bash tools/cuda_check.sh [--dry-run | --speed]; got '$1'" >&2; exit 2 ;;
esac

out=${OUT:-work_dirs/cuda_check}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# The extension is built in place: the checkout's mmlstride is the one imported.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
jobs=${MAX_JOBS:-$(nproc)}
summary="$out/summary.txt"
: > "$summary"
failures=0

# step NAME LIMIT_SECONDS LOG COMMAND...: runs COMMAND with a time limit, its output
# appended to $out/LOG and to stdout, and adds a line to the summary.
step() {
  local name=$1 limit=$2 log="$out/$3" start=$SECONDS status verdict
  shift 3
  echo "== $name (at most ${limit} s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  case $status in
    0) verdict=passed ;;
    124 | 137) verdict="timed out after ${limit} s" ;;
    *) verdict="failed (exit $status)" ;;
  esac
  [ "$status" -eq 0 ] || failures=$((failures + 1))
  printf '%-34s %-26s %5d s\n' "$name" "$verdict" $((SECONDS - start)) | tee -a "$summary"
  return "$status"
}

finish() {
  echo
  echo "== summary ($out)"
  cat "$summary"
  exit $((failures > 0))
}

# 1. The environment.
gpu_visible=0
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  gpu_visible=1
fi
{
  date -u '+%Y-%m-%d %H:%M UTC'
  if [ "$gpu_visible" = 1 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  else
    echo 'no GPU visible (nvidia-smi absent or sees none)'
  fi
  command -v nvcc > /dev/null && nvcc --version | tail -n 2
  "$python" -c "import sys, torch; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(),
'| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$out/environment.txt"

if [ "$gpu_visible" = 0 ] && [ "$dry_run" = 0 ]; then
  echo "no GPU visible: the CUDA checks need one (bash tools/cuda_check.sh --dry-run checks" \
       "the script's steps up to the build here)" >&2
  exit 1
fi

# 2. The build: the visible GPU's architecture only, unless TORCH_CUDA_ARCH_LIST says.
echo "CC=${CC:-} CXX=${CXX:-}" | tee -a "$out/environment.txt"
if [ "$gpu_visible" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(nvidia-smi --query-gpu=compute_cap \
    --format=csv,noheader | head -n 1)}
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" | tee -a "$out/environment.txt"
  build_lib=.
  build=(env FORCE_CUDA=1 MAX_JOBS="$jobs" "$python" setup.py build_ext --inplace)
else
  # What this machine can check: the CPU build, into a scratch folder (replacing the
  # extension in place could break a process that has it loaded).
  build_lib="$out/dry_run_build"
  build=(env MAX_JOBS="$jobs" "$python" setup.py build_ext --build-lib "$build_lib"
         --build-temp "$build_lib/temp")
fi
step build 300 build.log "${build[@]}" || finish
# The built library alone (loaded by path, not through the package), so that the dry run
# checks its scratch build: an error the op raises reaches Python with its numbers.
extension=$(ls "$build_lib"/mmlstride/_ext*.so)
step 'errors raised with their values' 60 build.log "$python" -c "
import sys, torch
torch.ops.load_library(sys.argv[1])
try:
    torch.ops.mmlstride.ls_conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3),
                                  torch.tensor([0.0, 2.0]), None, [0, 0], [1, 1], 1, [1, 1], None)
except ValueError as error:
    assert 'stride=(0, 2) expected finite values > 0' in str(error), repr(str(error))
    print('ValueError:', error)
else:
    sys.exit('stride=(0, 2) raised no error')" "$extension"
step 'sanitizer cases on the CPU' 60 sanitizer.log \
  "$python" tools/cuda_sanitizer_cases.py --device cpu

# The speed steps' settings: on the GPU, the sizes that fill it; in a dry run, toy sizes on
# the CPU, which check the steps' commands.
if [ "$dry_run" = 1 ]; then
  device=(--device cpu)
  op_args=(--warmup 0 --repeats 1 --shapes 1x4x12 1x4x10x14)
  grid_args=(--warmup 0 --repeats 1 --shapes 1x4x12x10)
  backbone_args=(--warmup 0 --repeats 1 --size 64 96 --batch 1)
else
  device=(--device cuda)
  op_args=(--warmup 5 --repeats 10 --cuda-graph --shapes r50-s2-b32 r50-s3-b32 r50-s4-b32 det-256)
  grid_args=(--warmup 3 --repeats 10)
  backbone_args=(--warmup 3 --repeats 8)
fi

speed_steps() {
  bench=(tools/benchmark_op.py "${device[@]}" "${op_args[@]}")
  step 'benchmark float32, TF32 off' 80 benchmark.log "$python" "${bench[@]}" --dtype float32 \
    --json "$out/benchmark_fp32.json" --png "$out/benchmark_fp32.png"
  step 'benchmark float32, TF32 on' 80 benchmark.log "$python" "${bench[@]}" --dtype float32 \
    --tf32 --json "$out/benchmark_tf32.json" --png "$out/benchmark_tf32.png"
  # bfloat16 with each kernel's device time (the fused GEMMs against the columns gradient's
  # product and its scatter: what a fused input gradient would save).
  step 'benchmark bfloat16' 80 benchmark.log "$python" "${bench[@]}" --dtype bfloat16 \
    --profile --json "$out/benchmark_bf16.json" --png "$out/benchmark_bf16.png"
  # Fixed grids (whole frozen strides): the op against pooling and the plain conv.
  step 'fixed-grid benchmark' 45 fixed_grid.log "$python" tools/benchmark_fixed_grid.py \
    "${device[@]}" "${grid_args[@]}" --dtype float32 bfloat16 --out "$out/fixed_grid.json"
  # The real-size step: a ResNet-50 backbone at 2 x 3 x 800 x 1333, forward+backward.
  step 'backbone step, 800 x 1333' 90 backbone.log "$python" tools/benchmark_backbone.py \
    "${device[@]}" "${backbone_args[@]}" --dtype float32 bfloat16 --out "$out/backbone.json"
}

if [ "$dry_run" = 1 ]; then
  speed_steps
  echo "dry run: stopped after the build step and the speed steps at toy sizes on the CPU;" \
       "on a GPU machine the CUDA tests, compute-sanitizer, the accuracy sweep, the launch" \
       "count and the speed steps at full size follow"
  finish
fi
step 'extension has CUDA kernels' 60 build.log "$python" -c "import torch, \
mmlstride.ops.extension as e; assert e.has_kernel(torch.device('cuda')), e.EXTENSION_ERROR" \
  || finish
if [ "$speed_only" = 1 ]; then
  speed_steps
  finish
fi

# 3. The tests: in parallel processes where pytest-xdist is installed.
parallel=()
"$python" -c 'import xdist' 2> /dev/null && parallel=(-n "$(( jobs < 8 ? jobs : 8 ))")
step 'CUDA tests' 240 pytest.log "$python" -m pytest -q -rs -p no:cacheprovider \
  "${parallel[@]}" tests/cuda/test_cuda.py tests/op/test_autocast.py tests/op/test_oracles.py \
  tests/op/test_torch_library.py tests/op/test_errors.py

# 4. compute-sanitizer without the caching allocator (so that an access past a tensor's end
# lands outside an allocation); memcheck, racecheck and synccheck on the op's kernels alone
# (names containing ls_conv), initcheck on every kernel, since it counts memory written by a
# kernel it does not check (cuBLAS's products, torch's fills) as uninitialised.
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck synccheck initcheck; do
    filter=(--kernel-name kns=ls_conv)
    [ "$tool" = initcheck ] && filter=()
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "compute-sanitizer $tool" 90 sanitizer.log \
      compute-sanitizer --tool "$tool" "${filter[@]}" --error-exitcode 1 \
      --print-limit 20 "$python" tools/cuda_sanitizer_cases.py
  done
else
  echo 'compute-sanitizer not found: its step skipped' | tee -a "$out/sanitizer.log" "$summary"
  failures=$((failures + 1))
fi

# 5-9. Accuracy, launches, speed.
step 'accuracy sweep' 90 accuracy.log "$python" tools/check_accuracy.py --device cuda --cases 50
step 'kernel launches' 60 launches.log "$python" tools/count_launches.py --device cuda
speed_steps
finish

#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv with the pinned stack and
# mmlstride installed in place with its C++ extension. Safe to re-run: what is
# already installed is kept. Override the location with MMLSTRIDE_VENV, the torch with
# MMLSTRIDE_TORCH (default 2.13.0; any supported release, 2.1.0 and newer), and leave out
# mmcv, mmdet and mim with MMLSTRIDE_OPENMMLAB=0.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MMLSTRIDE_VENV:-.venv}
torch_version=${MMLSTRIDE_TORCH:-2.13.0}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.1 and 2.2 are built against NumPy 1: every install below keeps numpy < 2.
case $torch_version in
  2.1.*|2.2.*) export PIP_CONSTRAINT=$PWD/requirements/numpy1.txt ;;
esac
# Extensions of this stack compile against the environment's torch, so builds in
# this venv see it: plain `pip install -e .` and `mim install -e .` then work.
# (pip reads `no-build-isolation = false` as "isolation off".)
printf '[install]\nno-build-isolation = false\n' > "$venv/pip.conf"
pip install -q --upgrade pip 'setuptools>=77,<81' wheel ninja
# torch first and pinned: an unpinned torch requirement would pull the newest CUDA build.
pip install -q "torch==$torch_version"
pip install -q -r requirements/runtime.txt -r requirements/tests.txt -r requirements/docs.txt
# The headers of CUDA 11.8 and 12.1 (torch 2.1's CUDA builds), which the CUDA code is checked
# against (tests/cuda/test_cuda_kernels_compile.py): about 60 MB each, apart from site-packages.
for cuda in 11.8.89 12.1.105; do
  target=$venv/cuda-headers/${cuda%.*}
  [ -d "$target/nvidia" ] || pip install -q --no-deps --target "$target" \
    "nvidia-cuda-runtime-cu${cuda%%.*}==$cuda" "nvidia-cuda-nvcc-cu${cuda%%.*}==$cuda"
done
if [ "${MMLSTRIDE_OPENMMLAB:-1}" = 1 ]; then
  # mmcv 2.1.0 has no wheel for this torch: built from source once per torch (about 9 minutes
  # on 2 cores), then reinstalled from that build (tools/install_mmcv.sh).
  bash tools/install_mmcv.sh
  pip install -q -r requirements/openmmlab.txt
  # mim without opendatalab (see requirements/mim.txt), quietly.
  bash tools/install_mim.sh
  # mim install = pip install + the OpenMMLab extras; the configs land in mmlstride/.mim.
  MAX_JOBS=2 mim install -q -e .
else
  MAX_JOBS=2 pip install -q -e .
fi
python -c "import mmlstride.ops.extension as e; assert e.EXTENSION_ERROR is None, e.EXTENSION_ERROR"

#!/usr/bin/env bash
# Installs mmcv with its ops (requirements/openmmlab.txt's version) into the active environment,
# compiled against that environment's torch. mmcv has no wheel on PyPI: it is built from source
# once per torch and Python (about 9 minutes on 2 cores) into
# ${MMLSTRIDE_WHEELS:-~/.cache/mmlstride/wheels}/torch-<version>-py<version>, and installed from
# there afterwards. pip's own wheel cache is bypassed: it keys a built wheel by its source alone,
# so it would hand a wheel compiled against one torch to an environment with another. Against a
# torch whose headers need C++20 (2.14 and newer), the compiler runs through tools/cxx20.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mmcv=$(grep -E '^mmcv==' requirements/openmmlab.txt)
tag=$(python -c 'import sys, torch; print(f"torch-{torch.__version__}-py{sys.version_info[0]}.{sys.version_info[1]}")')
wheels=${MMLSTRIDE_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mmlstride/wheels}/$tag
version=${mmcv#mmcv==}
if ! compgen -G "$wheels/mmcv-$version-*.whl" > /dev/null; then
  echo "Building $mmcv against $tag (once; about 9 minutes on 2 cores)"
  aten=$(python -c 'from torch.utils import cpp_extension as c; print(c.include_paths()[0])')/ATen/ATen.h
  if grep -q 'C++20 or later' "$aten"; then
    # This torch's headers need C++20, and mmcv's setup.py asks for C++17.
    export MMLSTRIDE_CXX=${CXX:-c++} CXX=$PWD/tools/cxx20.sh
  fi
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip wheel -q --no-deps --no-cache-dir \
    --no-build-isolation "$mmcv" -w "$wheels"
fi
pip install -q "$wheels"/mmcv-"$version"-*.whl

#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv with the pinned stack and
# mmlstride installed in place with its C++ extension. Safe to re-run: what is
# already installed is kept. Override the location with MMLSTRIDE_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MMLSTRIDE_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Extensions of this stack compile against the environment's torch, so builds in
# this venv see it: plain `pip install -e .` and `mim install -e .` then work.
# (pip reads `no-build-isolation = false` as "isolation off".)
printf '[install]\nno-build-isolation = false\n' > "$venv/pip.conf"
pip install -q --upgrade pip 'setuptools>=77,<81' wheel ninja
# torch first and pinned: an unpinned torch requirement would pull the newest CUDA build.
pip install -q torch==2.13.0
pip install -q -r requirements/runtime.txt -r requirements/tests.txt -r requirements/docs.txt
# mmcv 2.1.0 has no wheel for this torch: built from source once (about 9 minutes
# on 2 cores), then reinstalled from pip's wheel cache.
MMCV_WITH_OPS=1 MAX_JOBS=2 pip install -q -r requirements/openmmlab.txt
# mim without opendatalab (see requirements/mim.txt), quietly.
bash tools/install_mim.sh
# mim install = pip install + the OpenMMLab extras; the configs land in mmlstride/.mim.
MAX_JOBS=2 mim install -q -e .
python -c "import mmlstride.ops.extension as e; assert e.EXTENSION_ERROR is None, e.EXTENSION_ERROR"

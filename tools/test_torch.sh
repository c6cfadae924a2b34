#!/usr/bin/env bash
# The test suite on a torch other than the pinned one, e.g. the oldest supported (2.1.2) or the
# newest this machine serves (2.14.1): usage `bash tools/test_torch.sh VERSION [pytest args]`.
# The tree is copied to build/torch-VERSION/src, which gets its own extension build, and
# installed there into build/torch-VERSION/venv as the README tells a user of that torch
# (tools/setup_env.sh with MMLSTRIDE_TORCH=VERSION; MMLSTRIDE_OPENMMLAB=0 leaves out mmcv and
# mmdet, whose tests are then skipped, also under CI). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash tools/test_torch.sh VERSION [pytest arguments]}
shift
leg=$PWD/build/torch-$version
rm -rf "$leg/src"
mkdir -p "$leg/src"
# The tracked files and the new ones not ignored: what a clone of this tree would hold.
git ls-files -z --cached --others --exclude-standard |
  xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' |
  tar --null -cf - -T - | tar -xf - -C "$leg/src"
MMLSTRIDE_TORCH=$version MMLSTRIDE_VENV=$leg/venv bash "$leg/src/tools/setup_env.sh"
cd "$leg/src"
exec "$leg/venv/bin/python" -m pytest "$@"  # pytest.ini: tests/ unless paths are given

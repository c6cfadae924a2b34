#!/usr/bin/env bash
# The main job: sets up .venv (tools/setup_env.sh), then trains the quick
# digits detector with learned strides (RetinaNet, LSConv in ResNet stages 2-4;
# data generated on first use, nothing downloaded) through `mim train mmdet`,
# and plots the strides it learned. About 2 minutes on 2 CPU cores after set-up.
# Extra arguments go to mmdet's train tool (e.g. --cfg-options train_cfg.max_iters=100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
venv=${MMLSTRIDE_VENV:-.venv}
work_dir=work_dirs/quick
"$venv/bin/mim" train mmdet configs/digits/retinanet_r18n-ls_digits_quick.py \
  --gpus 0 --launcher none --work-dir "$work_dir" "$@" 2>&1 |
  grep --line-buffered -v -e 'UserWarning' -e 'import pkg_resources'
"$venv/bin/python" tools/plot_strides.py "$work_dir"

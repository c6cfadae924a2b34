#!/usr/bin/env bash
# The main job: sets up .venv (tools/setup_env.sh), then trains the quick
# digits detector with learned strides (RetinaNet, LSConv in ResNet stages 2-4; the
# detection study's config and data, generated on first use, nothing downloaded) through
# `mim train mmdet`,
# plots the strides it learned, and exports the detector to ONNX (tools/deploy.py).
# About 3 minutes on 2 CPU cores after set-up.
# Extra arguments go to mmdet's train tool (e.g. --cfg-options train_cfg.max_iters=100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
venv=${MMLSTRIDE_VENV:-.venv}
work_dir=work_dirs/quick
config=projects/lsconv_study/configs/digits/retinanet_r18n-ls_digits_quick.py
# The study's configs import its package, projects.lsconv_study.lsconv_study.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$venv/bin/mim" train mmdet "$config" \
  --gpus 0 --launcher none --work-dir "$work_dir" "$@" 2>&1 |
  grep --line-buffered -v -e 'UserWarning' -e 'import pkg_resources'
"$venv/bin/python" tools/plot_strides.py "$work_dir"
# The trained detector exported to ONNX and run in ONNX Runtime: its error, latency and
# detections next to PyTorch's (work_dirs/quick/deploy/detections.jpg).
"$venv/bin/python" tools/deploy.py "$config" \
  "$(cat "$work_dir/last_checkpoint")" --out "$work_dir/deploy" 2>&1 |
  grep --line-buffered -v -e 'UserWarning' -e 'import pkg_resources' -e '^W[0-9]' \
    -e 'torch.onnx\]' -e '_bootstrap._exec' -e 'FutureWarning' -e 'cls.__new__' \
    -e 'annotations into memory' -e '^Done (t=' -e 'creating index' -e 'index created'

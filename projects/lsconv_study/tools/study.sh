#!/usr/bin/env bash
# The grid-anchor study (results.md, "Where the learned grid is anchored"): trains its cells
# with benchmark.py, two runs at a time, most important cells first, then rewrites the suites'
# sections of results.md from every finished run. Re-running it trains only what is missing.
# STUDY_WORK_DIR sets where the runs go (default work_dirs/detection_benchmark).
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository
python=${MMLSTRIDE_VENV:-.venv}/bin/python
work_dir=${STUDY_WORK_DIR:-work_dirs/detection_benchmark}
bench() { "$python" projects/lsconv_study/tools/benchmark.py --jobs 2 --work-dir "$work_dir" "$@"; }
five='0 1 2 3 4'
# 1. Fixed strides, the corner grid and the learned phase, 5 seeds on both RetinaNet datasets.
bench --suite digits-grid --settings fixed lsconv lsconv-phase --seeds $five --other-seeds $five
bench --suite scaled --settings fixed lsconv lsconv-phase --seeds $five --other-seeds $five
# 2. The centre pivot (3 seeds) and DCN (5) on digits; the LSConv neck, 3 seeds.
bench --suite digits-grid --settings lsconv-centre dcn --seeds $five --other-seeds 0 1 2
bench --suite digits-neck --seeds 0 1 2
# 3. Faster R-CNN, 3 seeds; the centre pivot and DCN on scaled digits, 3 seeds (DCN costs 2.3x).
bench --suite digits-frcnn --seeds 0 1 2
bench --suite scaled --settings lsconv-centre dcn --seeds 0 1 2 --other-seeds 0 1 2
# 4. The learned phase's control: the phase fixed at half a pixel (anti-aliasing?), 5 seeds on
#    both RetinaNet datasets; the learned phase in Faster R-CNN came with step 3.
bench --suite digits-grid --settings lsconv-half --seeds $five --other-seeds $five
bench --suite scaled --settings lsconv-half --seeds $five --other-seeds $five
# The sections of results.md, from every finished run.
for suite in digits-grid scaled digits-frcnn digits-neck; do
  bench --suite "$suite" --no-train --seeds $five --other-seeds $five \
    --readme projects/lsconv_study/results.md \
    --figure "projects/lsconv_study/figures/study_$suite.png"
done

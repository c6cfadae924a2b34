#!/usr/bin/env bash
# LSConv against fixed anti-aliasing (results.md, "LSConv against a fixed blur"): trains its
# cells with benchmark.py, two runs at a time, most important cells first, evaluates every run
# under shifts, measures each setting's cost alone, then rewrites the suites' sections of
# results.md. Re-running it trains only what is missing. STUDY_WORK_DIR
# sets where the runs go (default work_dirs/detection_benchmark); BEST_LSCONV, BEST_BLUR name
# the cells that get five seeds with fixed strides and the fixed half phase with frozen strides
# (defaults: the best of the three-seed cells on digits by mean mAP).
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository
python=${MMLSTRIDE_VENV:-.venv}/bin/python
work_dir=${STUDY_WORK_DIR:-work_dirs/detection_benchmark}
best_lsconv=${BEST_LSCONV:-lsconv-half}
best_blur=${BEST_BLUR:-blurpool}
bench() { "$python" projects/lsconv_study/tools/benchmark.py --jobs 2 --work-dir "$work_dir" "$@"; }
three='0 1 2'
five='0 1 2 3 4'
everything='fixed lsconv-half-frozen blurpool blurfirst lsconv-half lsconv-phase lsconv'
# 1. Every setting on digits, 3 seeds.
bench --suite antialias --settings $everything --seeds $three --other-seeds $three
# 2. Fixed strides, the best LSConv setting, the fixed half phase with frozen strides (does
#    learning the strides add anything to a fixed blur?) and the better BlurPool: 5 seeds on
#    digits; the fixed anti-aliasing settings on scaled digits, 3 seeds; the same cells in
#    Faster R-CNN on digits, 3 seeds.
main_cells="fixed lsconv-half-frozen $best_lsconv $best_blur"
bench --suite antialias --settings $main_cells --seeds $five --other-seeds $five
bench --suite antialias-scaled --settings fixed lsconv-half-frozen blurpool blurfirst \
  --seeds $three --other-seeds $three
bench --suite antialias-frcnn --settings $main_cells --seeds $three --other-seeds $three
# 3. Scaled digits: 5 seeds of fixed strides, the fixed half phase with frozen strides and
#    BlurPool (the comparison the default rests on), then the best LSConv setting, then the
#    side questions (the learned phase, the corner grid), 3 seeds.
bench --suite antialias-scaled --settings fixed lsconv-half-frozen $best_blur --seeds $five \
  --other-seeds $five
bench --suite antialias-scaled --settings $best_lsconv --seeds $three --other-seeds $three
bench --suite antialias-scaled --settings lsconv-phase lsconv --seeds $three \
  --other-seeds $three
# 4. Costs, measured alone (nothing else may run meanwhile), then the sections of
#    results.md and their figures, from every finished run.
for suite in antialias antialias-scaled antialias-frcnn; do
  "$python" projects/lsconv_study/tools/benchmark.py --suite $suite --no-train --costs \
    --seeds $five \
    --other-seeds $five --work-dir "$work_dir" --readme projects/lsconv_study/results.md \
    --figure "projects/lsconv_study/figures/study_$suite.png"
done

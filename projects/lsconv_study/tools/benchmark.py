"""The CPU detection study: trains a suite's settings, paired on seed, and reports them
(:mod:`projects.lsconv_study.lsconv_study.benchmark`).

    python projects/lsconv_study/tools/benchmark.py --readme projects/lsconv_study/results.md
    python projects/lsconv_study/tools/benchmark.py --settings fixed lsconv --seeds 0
    python projects/lsconv_study/tools/benchmark.py --suite antialias --seeds 0 1 2 --costs
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))  # the repository, for `projects.lsconv_study`

from projects.lsconv_study.lsconv_study.benchmark import main  # noqa: E402

if __name__ == '__main__':
    main()

"""The study's statistics against values computed by hand: the t-test at its smallest sample,
the summaries' means per layer and axis, and rows of runs without timings."""
import math

import pytest

from conftest import require_module

require_module('scipy')
require_module('mmdet')  # the study's package registers its datasets with mmdet

from projects.lsconv_study.lsconv_study import paired_stats  # noqa: E402


def test_t_test_needs_two_seeds_that_differ():
    # Two seeds, differences 1 and 3: t = 2 / (sqrt(2) / sqrt(2)) = 2 on 1 degree of freedom,
    # two-sided p = 1 - 2 atan(2) / pi = 0.2952.
    assert paired_stats.paired_t_test([1.0, 3.0]) == pytest.approx(0.2952, abs=1e-4)
    # Three seeds with two distinct values: t = (5/3) / (sqrt(4/3) / sqrt(3)) = 2.5 on 2
    # degrees of freedom, p = 0.1296.
    assert paired_stats.paired_t_test([1.0, 1.0, 3.0]) == pytest.approx(0.1296, abs=1e-4)
    assert math.isnan(paired_stats.paired_t_test([2.0]))
    assert math.isnan(paired_stats.paired_t_test([2.0, 2.0, 2.0]))


def test_confidence_interval_of_two_seeds():
    # mean 2, std sqrt(2): half-width t(0.975, 1) sqrt(2) / sqrt(2) = 12.706.
    mean, half = paired_stats.mean_and_ci([1.0, 3.0])
    assert (mean, half) == pytest.approx((2.0, 12.7062), abs=1e-4)
    mean, half = paired_stats.mean_and_ci([5.0])
    assert mean == 5.0 and math.isnan(half)


def run(value, strides, phases=None, seconds=None):
    result = {'bbox_mAP': value, 'bbox_mAP_50': value + 20, 'seconds_per_iter': seconds,
              'final_strides': strides, 'scalars': ''}
    if phases is not None:
        result['final_phases'] = phases
    return result


def test_summary_means_strides_per_layer_and_axis():
    runs = {'lsconv': {0: run(60.0, {'a': (1.9, 2.2), 'b': (2.0, 2.4)}, {'a': (0.2, -0.4)}),
                       1: run(62.0, {'a': (2.1, 2.6), 'b': (1.8, 2.0)}, {'a': (-0.4, 0.2)})}}
    (row,), _ = paired_stats.summarise(runs)
    assert row['final_strides_mean'] == {'a': pytest.approx([2.0, 2.4]),
                                         'b': pytest.approx([1.9, 2.2])}
    assert row['final_phases_abs_mean'] == {'a': pytest.approx([0.3, 0.3])}
    assert row['seconds_per_iter'] is None  # no run was timed
    runs['lsconv'][1]['seconds_per_iter'] = 0.5
    (row,), _ = paired_stats.summarise(runs)
    assert row['seconds_per_iter'] == 0.5  # the median of the timed runs only

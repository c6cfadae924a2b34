"""The study's statistics: per-setting summaries over seeds, and paired differences on seed
with 95% confidence intervals (Student's t) and the paired t-test's p-value."""
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .suites import DEFAULT_SUITE, SUITES


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (two-sided 95%)."""
    from scipy.stats import t
    return float(t.ppf(0.975, dof))


def mean_and_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t; NaN for one
    value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float('nan')
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def paired_t_test(differences: Sequence[float]) -> float:
    """Two-sided p-value of Student's paired t-test that the mean difference is 0 (NaN for
    fewer than two seeds or differences that are all equal)."""
    from scipy.stats import ttest_1samp
    if len(differences) < 2 or len(set(differences)) < 2:
        return float('nan')
    return float(ttest_1samp(differences, 0.0).pvalue)


def paired_difference(runs: Dict[str, Dict[int, dict]], setting: str, against: str,
                      metric: str = 'bbox_mAP') -> Optional[dict]:
    """``metric`` of ``setting`` minus ``against`` on each seed both have: mean, 95% CI and
    the paired t-test's p-value; with ``metric`` bbox_mAP, the same for the shift
    consistency under ``consistency`` where every paired run has it."""
    shared = sorted(set(runs.get(setting, {})) & set(runs.get(against, {})))
    if not shared:
        return None
    diffs = [runs[setting][s][metric] - runs[against][s][metric] for s in shared]
    mean, half = mean_and_ci(diffs)
    pair = {'setting': setting, 'against': against, 'seeds': shared, 'differences': diffs,
            'mean': mean, 'ci95': half, 'p_value': paired_t_test(diffs)}
    if metric == 'bbox_mAP' and all('consistency' in runs[name][seed]
                                    for name in (setting, against) for seed in shared):
        pair['consistency'] = paired_difference(runs, setting, against, 'consistency')
    return pair


def summarise(runs: Dict[str, Dict[int, dict]],
              suite: str = DEFAULT_SUITE) -> Tuple[List[dict], List[dict]]:
    """Per-setting rows (mean ± std over seeds) and paired differences against the baseline,
    then of each learned setting against its frozen control."""
    rows, pairs = [], []
    for setting, by_seed in runs.items():
        results = list(by_seed.values())
        maps = [r['bbox_mAP'] for r in results]
        times = [r['seconds_per_iter'] for r in results if r['seconds_per_iter'] is not None]
        layers = results[0]['final_strides'].keys()
        phase_layers = results[0].get('final_phases', {}).keys()
        rows.append({
            'setting': setting, 'seeds': sorted(by_seed),
            'bbox_mAP_mean': statistics.mean(maps),
            'bbox_mAP_std': statistics.stdev(maps) if len(maps) > 1 else 0.0,
            'bbox_mAP_50_mean': statistics.mean(r['bbox_mAP_50'] for r in results),
            'seconds_per_iter': statistics.median(times) if times else None,
            **{f'{key}_mean': statistics.mean(r[key] for r in results)
               for key in ('consistency', 'consistency_half', 'mAP_spread')
               if all(key in r for r in results)},
            'final_strides_mean': {layer: [statistics.mean(r['final_strides'][layer][axis]
                                                           for r in results) for axis in (0, 1)]
                                   for layer in layers},
            # Their sign differs between seeds: the mean size says how far they move.
            'final_phases_abs_mean': {layer: [statistics.mean(abs(r['final_phases'][layer][axis])
                                                              for r in results) for axis in (0, 1)]
                                      for layer in phase_layers},
        })
    baseline, controls = SUITES[suite].baseline, SUITES[suite].controls
    for against, settings in ((baseline, [s for s in runs if s != baseline]),
                              *((control, [learned]) for learned, control in controls.items()),
                              ('lsconv', SUITES[suite].against_corner),
                              *((against, [setting]) for setting, against in SUITES[suite].pairs)):
        pairs += [p for p in (paired_difference(runs, s, against) for s in settings) if p]
    return rows, pairs

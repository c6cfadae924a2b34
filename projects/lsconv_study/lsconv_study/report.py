"""The study's report: Markdown tables of a suite (results, paired differences, costs, mAP
per seed), its figure, and the rewrite of its section of the results page."""
from typing import Dict, List, Optional, Tuple

from mmlstride.engine import PHASE_PREFIX, read_stride_trajectories

from .suites import DEFAULT_SUITE, SUITES


def readme_markers(suite: str = DEFAULT_SUITE) -> Tuple[str, str]:
    """The comments around a suite's section of the README (the digits suite keeps its
    original ones)."""
    name = 'detection-benchmark' if suite == DEFAULT_SUITE else f'detection-benchmark:{suite}'
    option = '' if suite == DEFAULT_SUITE else f' --suite {suite}'
    return (f'<!-- {name}:start (projects/lsconv_study/tools/benchmark.py{option} --readme) -->',
            f'<!-- {name}:end -->')


README_START, README_END = readme_markers()


def confidence_cells(pair: dict) -> Tuple[str, str]:
    """A paired difference's 95% CI and p-value as table cells ('-' for one seed)."""
    low, high = pair['mean'] - pair['ci95'], pair['mean'] + pair['ci95']
    interval = '-' if len(pair['seeds']) < 2 else f'[{low:+.2f}, {high:+.2f}]'
    p_value = '-' if pair['p_value'] != pair['p_value'] else f"{pair['p_value']:.3f}"
    return interval, p_value


def cost_table(rows: List[dict], suite: str, costs: dict) -> List[str]:
    """Lines of the cost table of the settings in ``rows`` that have costs, with ratios to
    the baseline's."""
    names = {row['setting']: SUITES[suite].settings[row['setting']][0] for row in rows}
    measured = {setting: costs[name] for setting, name in names.items() if name in costs}
    if not measured:
        return []
    base = measured.get(SUITES[suite].baseline)
    threads = sorted({c['threads'] for c in measured.values()})
    lines = ['', f'Cost, measured alone (one process, {"/".join(map(str, threads))} threads; '
             'medians; ratios to the baseline):', '',
             '| setting | backbone multiply-adds per image | train s/iter | inference ms/image '
             '| network ms/image |', '|---|---|---|---|---|']

    def cell(setting: str, key: str, form: str) -> str:
        value = measured[setting][key]
        ratio = f' ({value / base[key]:.2f}x)' if base else ''
        return format(value, form) + ratio

    for setting in measured:
        lines.append(f"| `{setting}` | {cell(setting, 'backbone_macs', ',')} | "
                     f"{cell(setting, 'train_s_per_iter', '.3f')} | "
                     f"{cell(setting, 'inference_ms_per_image', '.1f')} | "
                     f"{cell(setting, 'network_ms_per_image', '.1f')} |")
    return lines


def markdown(rows: List[dict], pairs: List[dict], runs: Dict[str, Dict[int, dict]],
             suite: str = DEFAULT_SUITE, costs: Optional[dict] = None) -> str:
    """The tables of the suite's README section (with ``costs``, by config, a cost table)."""
    lines = ['| setting | seeds | bbox mAP (mean ± std) | mAP@50 | consistency %, whole / half '
             'px | mAP spread over shifts | s/iter | final strides (s_h, s_w), learned layers '
             'in order | final learned phases, mean size (\\|t_h\\|, \\|t_w\\|) |',
             '|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        strides = ' '.join(f'({h:.2f}, {w:.2f})' for h, w in row['final_strides_mean'].values())
        phases = ' '.join(f'({h:.2f}, {w:.2f})'
                          for h, w in row.get('final_phases_abs_mean', {}).values())
        seconds = '-' if row['seconds_per_iter'] is None else f"{row['seconds_per_iter']:.2f}"
        consistency = (f"{row['consistency_mean']:.1f} / {row['consistency_half_mean']:.1f}"
                       if 'consistency_mean' in row else '-')
        spread = f"{row['mAP_spread_mean']:.1f}" if 'mAP_spread_mean' in row else '-'
        lines.append(f"| {SUITES[suite].settings[row['setting']][1]} (`{row['setting']}`) | "
                     f"{len(row['seeds'])} | {row['bbox_mAP_mean']:.1f} ± "
                     f"{row['bbox_mAP_std']:.1f} | {row['bbox_mAP_50_mean']:.1f} | "
                     f"{consistency} | {spread} | {seconds} | {strides or '-'} | "
                     f"{phases or '-'} |")
    lines += ['', 'Paired on seed (same initial weights, same data order):', '',
              '| setting | minus | seeds | mean difference (bbox mAP) | 95% CI | p (paired t) '
              '| per seed | consistency difference (points), 95% CI, p |',
              '|---|---|---|---|---|---|---|---|']
    for pair in pairs:
        interval, p_value = confidence_cells(pair)
        per_seed = ', '.join(f'{d:+.1f}' for d in pair['differences'])
        consistency = '-'
        if 'consistency' in pair:
            c_interval, c_p = confidence_cells(pair['consistency'])
            consistency = f"{pair['consistency']['mean']:+.2f} {c_interval}, p {c_p}"
        lines.append(f"| `{pair['setting']}` | `{pair['against']}` | {len(pair['seeds'])} | "
                     f"{pair['mean']:+.2f} | {interval} | {p_value} | {per_seed} | "
                     f"{consistency} |")
    lines += cost_table(rows, suite, costs or {})
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    lines += ['', 'bbox mAP per seed:', '',
              '| seed | ' + ' | '.join(f'`{s}`' for s in runs) + ' |',
              '|---' * (len(runs) + 1) + '|']
    for seed in seeds:
        cells = [f"{runs[s][seed]['bbox_mAP']:.1f}" if seed in runs[s] else '' for s in runs]
        lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows: List[dict], pairs: List[dict], runs: Dict[str, Dict[int, dict]],
         path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    learned = [s for s in runs if next(iter(runs[s].values()))['final_strides']
               and 'frozen' not in s]
    shifted = [r for r in rows if 'consistency_mean' in r]
    panels = 2 + bool(shifted) + len(learned)
    columns = min(panels, 3)
    lines = -(-panels // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(5.5 * columns, 4.2 * lines), squeeze=False)
    axes = grid.ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    names = [r['setting'] for r in rows]
    axes[0].bar(names, [r['bbox_mAP_mean'] for r in rows],
                yerr=[r['bbox_mAP_std'] for r in rows], capsize=4, color='tab:blue')
    for x, setting in enumerate(names):
        maps = [r['bbox_mAP'] for r in runs[setting].values()]
        axes[0].plot([x] * len(maps), maps, 'k.')
    axes[0].set_ylabel('bbox mAP (%)')
    axes[0].set_title('mean ± std over seeds')
    axes[0].tick_params(axis='x', rotation=30)
    shown = [p for p in pairs if abs(p['mean']) < 20]  # a collapse would squash the others
    for y, pair in enumerate(shown):
        axes[1].errorbar(pair['mean'], y, xerr=pair['ci95'], fmt='o', capsize=4)
        axes[1].plot(pair['differences'], [y] * len(pair['differences']), 'k.', alpha=0.5)
    axes[1].axvline(0, color='grey', linewidth=1)
    axes[1].set_yticks(range(len(shown)), [f"{p['setting']} - {p['against']}" for p in shown])
    axes[1].set_xlabel('bbox mAP difference, same seed')
    axes[1].set_title('paired differences, mean and 95% CI')
    if shifted:
        ax = axes[2]
        for index, row in enumerate(shifted):
            seeds = list(runs[row['setting']].values())
            ax.plot([r['consistency'] for r in seeds], [r['bbox_mAP'] for r in seeds], '.',
                    color=f'C{index}', alpha=0.5)
            ax.plot(row['consistency_mean'], row['bbox_mAP_mean'], 'o', color=f'C{index}',
                    label=row['setting'])
        ax.set_xlabel('shift consistency, whole pixels (%)')
        ax.set_ylabel('bbox mAP (%)')
        ax.set_title('mAP against consistency (dots: seeds)')
        ax.legend(fontsize=7)
    for ax, setting in zip(axes[2 + bool(shifted):], learned):
        scalars = next(iter(runs[setting].values()))['scalars']
        trajectories = read_stride_trajectories(scalars)
        for index, (layer, series) in enumerate(trajectories.items()):
            colour = f'C{index}'
            label = layer.replace('backbone.', '')
            ax.plot(*zip(*series['h']), color=colour, label=f'{label} s_h')
            ax.plot(*zip(*series['w']), color=colour, linestyle='--', label=f'{label} s_w')
        ax.set_xlabel('iteration')
        ax.set_ylabel('learned stride (pixels)')
        phases = read_stride_trajectories(scalars, PHASE_PREFIX)
        if phases:  # on a second axis, dotted
            twin = ax.twinx()
            for index, (layer, series) in enumerate(phases.items()):
                twin.plot(*zip(*series['h']), color=f'C{index}', linestyle=':')
                twin.plot(*zip(*series['w']), color=f'C{index}', linestyle='-.')
            twin.set_ylabel('learned phase (pixels): t_h dotted, t_w dash-dot')
        ax.set_title(f'{setting}: strides{" and phases" if phases else ""} (first seed)')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rewrite_readme(path: str, section: str, suite: str = DEFAULT_SUITE) -> None:
    """Replaces the text between the suite's benchmark markers of ``path`` with ``section``."""
    marker_start, marker_end = readme_markers(suite)
    with open(path) as f:
        text = f.read()
    start, end = text.find(marker_start), text.find(marker_end)
    if start < 0 or end < start:
        raise ValueError(f'{path} expected the markers {marker_start!r} and {marker_end!r}')
    with open(path, 'w') as f:
        f.write(text[:start + len(marker_start)] + '\n' + section + '\n' + text[end:])

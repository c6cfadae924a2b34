"""Shift consistency as an mmengine metric, for a config's ``val_evaluator``/``test_evaluator``.

``ShiftConsistencyMetric`` evaluates a detector on the samples of a
:class:`~.shifted_dataset.ShiftedDataset` (each image unshifted and at each shift, moved by
:class:`~.shifted_dataset.ShiftContent` in the pipeline). Per (image, shift) it keeps the
ground truth as shifted (``gt_instances``, mapped back to the image's own pixels through
``scale_factor`` as mmdet maps the predictions) and the predictions (``pred_instances``), and
computes the report of :func:`~.shift_consistency.shift_consistency` with the same function,
:func:`~.shift_consistency.shift_report`: mAP (in percent) and consistency per shift, and their
whole-pixel and fractional summaries. Logged as flat keys under ``shift/``:
``whole_consistency``, ``whole_mAP_mean``, ``whole_mAP_spread``, the same for
``fractional_``, and per shift ``mAP_{dx}_{dy}`` and ``consistency_{dx}_{dy}`` (``mAP_0_0``:
no shift). The nested report (``per_shift`` with object counts, ``whole``, ``fractional``,
``score_thr``, ``images``) stays in ``report`` after each evaluation (on the rank that
computes it).

A config (the metric, transform and wrapper are in mmdet's registries)::

    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                dict(type='ShiftContent'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
                dict(type='PackDetInputs')]
    val_dataloader = dict(..., dataset=dict(type='ShiftedDataset', dataset=dict(
        type='CocoDataset', ..., test_mode=True, pipeline=pipeline)))
    val_evaluator = dict(type='ShiftConsistencyMetric', score_thr=0.3)
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.evaluator import BaseMetric

from .shift_consistency import DEFAULT_SCORE_THR, shift_boxes, shift_report
from .shifted_dataset import NO_SHIFT, Shift

BOX_TOLERANCE = 0.01  # pixels: the pipeline's float32 boxes against the metric's float64 ones


def _numpy(value) -> np.ndarray:
    value = getattr(value, 'tensor', value)  # mmdet's boxes
    if hasattr(value, 'detach'):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class ShiftConsistencyMetric(BaseMetric):
    """mAP and consistency of a detector under shifts of its test images; see the module's
    docstring.

    Args:
        score_thr: the score a detection needs to match an object (for the consistency).
        collect_device, prefix, collect_dir: as mmengine's BaseMetric (prefix ``shift``).
    """
    default_prefix: Optional[str] = 'shift'

    def __init__(self, score_thr: float = DEFAULT_SCORE_THR, collect_device: str = 'cpu',
                 prefix: Optional[str] = None, collect_dir: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        if not 0 <= score_thr <= 1:
            raise ValueError(f'score_thr={score_thr}: expected a value in [0, 1]')
        self.score_thr = score_thr
        self.report: Optional[dict] = None

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            missing = [k for k in ('shift', 'source_idx', 'ori_shape') if k not in sample]
            if missing:
                raise KeyError(f'ShiftConsistencyMetric expected samples of a ShiftedDataset '
                               f'with {missing} in their metainfo')
            scale = np.tile(np.asarray(sample.get('scale_factor', (1.0, 1.0)), np.float64), 2)
            truth, found = sample['gt_instances'], sample['pred_instances']
            self.results.append({
                'source': int(sample['source_idx']),
                'shift': tuple(float(v) for v in sample['shift']),
                'shape': tuple(int(v) for v in sample['ori_shape'][:2]),
                'truth': (_numpy(truth['bboxes']).astype(np.float64).reshape(-1, 4) / scale,
                          _numpy(truth['labels'])),
                'detections': (_numpy(found['bboxes']).reshape(-1, 4), _numpy(found['scores']),
                               _numpy(found['labels']))})

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not self.dataset_meta or 'classes' not in self.dataset_meta:
            raise ValueError('ShiftConsistencyMetric expected dataset_meta with the classes')
        samples = {(r['source'], r['shift']): r for r in results}
        sources = sorted({source for source, _ in samples})
        shifts = self._shifts(results)
        missing = [(source, shift) for shift in (NO_SHIFT,) + shifts for source in sources
                   if (source, shift) not in samples]
        if missing:
            raise ValueError(f'ShiftConsistencyMetric found no sample of (image, shift) '
                             f'{missing[:5]}{" ..." if len(missing) > 5 else ""}')
        truths = [[samples[(s, shift)]['truth'] for s in sources]
                  for shift in (NO_SHIFT,) + shifts]
        detections = [[samples[(s, shift)]['detections'] for s in sources]
                      for shift in (NO_SHIFT,) + shifts]
        visibles = [[self._visible(samples[(s, NO_SHIFT)], samples[(s, shift)]) for s in sources]
                    for shift in shifts]
        report = shift_report(shifts, truths, detections, visibles,
                              len(self.dataset_meta['classes']), self.score_thr)
        self.report = dict(report, images=len(sources))
        metrics = {f'{part}_{key}': value for part in ('whole', 'fractional')
                   for key, value in report[part].items()}
        for row in report['per_shift']:
            name = f"{row['shift'][0]:g}_{row['shift'][1]:g}"
            metrics[f'mAP_{name}'] = row['mAP']
            metrics[f'consistency_{name}'] = row['consistency']
        return metrics

    def _shifts(self, results: List[dict]) -> Tuple[Shift, ...]:
        """The dataset's shifts in its order where its metainfo has them, else in the order
        the samples came."""
        if self.dataset_meta.get('shifts') is not None:
            return tuple((float(dx), float(dy)) for dx, dy in self.dataset_meta['shifts'])
        return tuple(dict.fromkeys(r['shift'] for r in results if r['shift'] != NO_SHIFT))

    @staticmethod
    def _visible(reference: dict, shifted: dict) -> np.ndarray:
        """Which of the reference's objects the shifted sample keeps; checks that its ground
        truth is the reference's moved by the shift."""
        height, width = reference['shape']
        moved, visible = shift_boxes(reference['truth'][0], *shifted['shift'], width, height)
        boxes, labels = shifted['truth']
        if (int(visible.sum()) != len(labels) or not np.allclose(
                moved[visible], boxes, rtol=0, atol=BOX_TOLERANCE)
                or not np.array_equal(reference['truth'][1][visible], labels)):
            raise ValueError(
                f'image {shifted["source"]} at shift {shifted["shift"]}: its ground truth is not '
                'the unshifted one moved by the shift; expected ShiftContent in the pipeline '
                'right after LoadImageFromFile and LoadAnnotations')
        return visible

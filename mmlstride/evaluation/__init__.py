"""Evaluation beyond mmdet's metrics: shift consistency.

:mod:`.shift_consistency` (numpy and pycocotools alone): the image and box shifts, matching,
COCO mAP, ``shift_consistency`` (a predict function under shifts) and ``shift_report`` (the
report from what was found at each shift).

The same evaluation in mmengine, for a config's ``val_evaluator``/``test_evaluator``
(needs mmdet; imported on first use, so ``import mmlstride.evaluation`` stays torch-free):
``ShiftedDataset`` (a test set unshifted and at each shift) and ``ShiftContent`` (the pipeline
step that moves image and boxes) in :mod:`.shifted_dataset`, and ``ShiftConsistencyMetric``
in :mod:`.shift_metric`. ``tools/shift_consistency.py`` runs them on a config and checkpoint.
"""
import importlib

from .shift_consistency import (DEFAULT_SCORE_THR, HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS,
                                coco_map, matched, shift_boxes, shift_consistency, shift_image,
                                shift_report)

_OPENMMLAB = {'ShiftConsistencyMetric': 'shift_metric', 'ShiftContent': 'shifted_dataset',
              'ShiftedDataset': 'shifted_dataset', 'with_shift_content': 'shifted_dataset'}

__all__ = ['DEFAULT_SCORE_THR', 'HALF_PIXEL_SHIFTS', 'WHOLE_PIXEL_SHIFTS', 'coco_map', 'matched',
           'shift_boxes', 'shift_consistency', 'shift_image', 'shift_report', *_OPENMMLAB]


def __getattr__(name: str):
    if name in _OPENMMLAB:
        return getattr(importlib.import_module(f'.{_OPENMMLAB[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

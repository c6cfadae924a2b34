"""Shifted copies of a detection test set, for :class:`~.shift_metric.ShiftConsistencyMetric`.

``ShiftedDataset(dataset, shifts)`` yields every image of ``dataset`` once without a shift and
once per (dx, dy) of ``shifts``, in that order (all images unshifted, then all at the first
shift, ...). It writes the shift into the data info it hands the pipeline, as
``results['shift']``, where :class:`ShiftContent` reads it; after the pipeline it sets
``shift`` (dx, dy) and ``source_idx`` (the image's index in ``dataset``) in the packed data
sample's metainfo itself, so that ``PackDetInputs``' ``meta_keys`` need not name them.

``ShiftContent`` moves the image with :func:`~.shift_consistency.shift_image` (float32 out,
also without a shift, as :func:`~.shift_consistency.shift_consistency` feeds the detector)
and the boxes with :func:`~.shift_consistency.shift_boxes`: clipped to the canvas, objects
that keep less than half their area dropped with their labels and ignore flags. It belongs
right after the loading steps, before ``Resize``, so that shifts are in the image's own
pixels: ``LoadImageFromFile``, ``LoadAnnotations``, ``ShiftContent``, ``Resize``, ...
(mmdet's test pipelines load annotations after ``Resize``: move ``LoadAnnotations`` up;
:func:`with_shift_content` rewrites a pipeline so). Without ``results['shift']`` (the same
pipeline used unwrapped) it changes nothing.
"""
import copy
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet.structures.bbox import BaseBoxes
from mmengine.dataset import BaseDataset

from .shift_consistency import HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS, shift_boxes, shift_image

Shift = Tuple[float, float]
NO_SHIFT = (0.0, 0.0)


class ShiftContent(BaseTransform):
    """Moves ``img`` and ``gt_bboxes`` right and down by ``results['shift']`` (dx, dy) pixels,
    keeping the canvas; drops the objects less than half visible after the shift from
    ``gt_bboxes``, ``gt_bboxes_labels`` and ``gt_ignore_flags``. See the module's docstring
    for its place in the pipeline.

    Required keys: ``img``, ``gt_bboxes`` (where ``shift`` is given). Modified keys: ``img``
    (float32), ``gt_bboxes``, ``gt_bboxes_labels``, ``gt_ignore_flags``.
    """

    def transform(self, results: dict) -> dict:
        if 'shift' not in results:
            return results
        dx, dy = (float(v) for v in results['shift'])
        if 'scale_factor' in results:
            raise ValueError('ShiftContent expected the image as loaded, found it resized: '
                             'place it before Resize, right after LoadImageFromFile and '
                             'LoadAnnotations')
        if 'gt_bboxes' not in results:
            raise ValueError('ShiftContent expected the ground truth loaded (gt_bboxes): place '
                             'it after LoadAnnotations')
        if any(key in results for key in ('gt_masks', 'gt_seg_map')):
            raise ValueError('ShiftContent moves images and boxes, not masks or maps')
        height, width = results['img'].shape[:2]
        results['img'] = shift_image(results['img'], dx, dy)
        if (dx, dy) == NO_SHIFT:  # the ground truth as loaded, as shift_consistency takes it
            return results
        boxes = results['gt_bboxes']
        array = boxes.tensor.numpy() if isinstance(boxes, BaseBoxes) else np.asarray(boxes)
        moved, visible = shift_boxes(array, dx, dy, width, height)
        if isinstance(boxes, BaseBoxes):
            results['gt_bboxes'] = type(boxes)(torch.as_tensor(moved[visible],
                                                               dtype=boxes.tensor.dtype))
        else:
            results['gt_bboxes'] = moved[visible].astype(array.dtype)
        for key in ('gt_bboxes_labels', 'gt_ignore_flags'):
            if key in results:
                results[key] = results[key][visible]
        return results


def with_shift_content(pipeline: Sequence) -> List:
    """``pipeline`` (a list of transform configs) with its loading steps (``LoadImage...``,
    ``LoadAnnotations``: types whose name starts with ``Load``) first, then ``ShiftContent``,
    then the rest in their order. Unchanged where it has a ShiftContent already."""
    def name(step) -> str:
        kind = step.get('type', '') if isinstance(step, dict) else step
        kind = kind if isinstance(kind, str) else getattr(kind, '__name__', type(kind).__name__)
        return kind.split('.')[-1]

    steps = [copy.deepcopy(step) for step in pipeline]
    if any(name(step) == 'ShiftContent' or isinstance(step, ShiftContent) for step in steps):
        return steps
    loads = [name(step).startswith('Load') for step in steps]
    return ([step for step, load in zip(steps, loads) if load] + [ShiftContent()]
            + [step for step, load in zip(steps, loads) if not load])


class ShiftedDataset:
    """``dataset`` (a dataset or its config) unshifted and at each (dx, dy) of ``shifts``
    (default 1-7 whole pixels and 0.5-3.5 pixels, diagonally); see the module's docstring.
    Its pipeline must hold a :class:`ShiftContent`. ``metainfo`` is the dataset's, with
    ``shifts`` added.

    Args:
        dataset: the dataset, or its config (built in mmdet's DATASETS).
        shifts: the (dx, dy) shifts, right and down, >= 0 and not both 0.
        lazy_init: whether to load the annotations only on first use.
    """

    def __init__(self, dataset: Union[BaseDataset, dict],
                 shifts: Sequence[Sequence[float]] = WHOLE_PIXEL_SHIFTS + HALF_PIXEL_SHIFTS,
                 lazy_init: bool = False) -> None:
        if isinstance(dataset, dict):
            from mmdet.registry import DATASETS
            dataset = DATASETS.build(dataset)
        self.dataset = dataset
        self.shifts: Tuple[Shift, ...] = tuple((float(dx), float(dy)) for dx, dy in shifts)
        if any(dx < 0 or dy < 0 for dx, dy in self.shifts) or NO_SHIFT in self.shifts \
                or len(set(self.shifts)) != len(self.shifts):
            raise ValueError(f'shifts={list(self.shifts)}: expected distinct (dx, dy) >= 0, '
                             'not (0, 0) (the unshifted images come first anyway)')
        transforms = getattr(getattr(dataset, 'pipeline', None), 'transforms', [])
        if not any(isinstance(t, ShiftContent) for t in transforms):
            raise ValueError('ShiftedDataset expected a ShiftContent in the dataset\'s pipeline, '
                             'right after LoadImageFromFile and LoadAnnotations: without it '
                             'the images would not move')
        self._metainfo = dict(copy.deepcopy(dataset.metainfo), shifts=self.shifts)
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        if not self._fully_initialized:
            self.dataset.full_init()
            self._fully_initialized = True

    def __len__(self) -> int:
        self.full_init()
        return (1 + len(self.shifts)) * len(self.dataset)

    def locate(self, idx: int) -> Tuple[int, Shift]:
        """The index in the wrapped dataset and the shift of sample ``idx``."""
        if not -len(self) <= idx < len(self):
            raise IndexError(f'index {idx} out of range for {len(self)} samples')
        shift, source = divmod(idx % len(self), len(self.dataset))
        return source, ((NO_SHIFT,) + self.shifts)[shift]

    def get_data_info(self, idx: int) -> dict:
        source, shift = self.locate(idx)
        return dict(self.dataset.get_data_info(source), shift=shift, source_idx=source)

    def __getitem__(self, idx: int) -> dict:
        info = self.get_data_info(idx)
        data = self.dataset.pipeline(info)
        if data is None:
            raise RuntimeError(f'the pipeline dropped sample {idx} (image {info["source_idx"]} '
                               f'at shift {info["shift"]})')
        sample = data.get('data_samples') if isinstance(data, dict) else None
        if not hasattr(sample, 'set_metainfo'):
            raise TypeError('ShiftedDataset expected the pipeline to end in a packer that '
                            'returns data_samples (PackDetInputs)')
        sample.set_metainfo(dict(shift=info['shift'], source_idx=info['source_idx']))
        return data

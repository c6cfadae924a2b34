"""ShiftContent and ShiftedDataset at their edges: the messages that say where each belongs,
the dtypes they keep, the shifts and indices they accept, and when the wrapped dataset loads."""
import re

import numpy as np
import pytest
import torch

from conftest import require_module

require_module('mmdet')

from mmdet.structures.bbox import HorizontalBoxes  # noqa: E402
from mmengine.dataset import Compose  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402

from mmlstride.evaluation import ShiftContent, ShiftedDataset  # noqa: E402

IMAGE = np.ones((8, 8, 3), np.uint8)
BOXES = np.array([[1.0, 1.0, 4.0, 5.0]])


def test_transform_says_where_it_belongs():
    for results, message in [
            (dict(gt_bboxes=BOXES, scale_factor=(1.0, 1.0)),
             'ShiftContent expected the image as loaded, found it resized: place it before '
             'Resize, right after LoadImageFromFile and LoadAnnotations'),
            ({}, 'ShiftContent expected the ground truth loaded (gt_bboxes): place it after '
                 'LoadAnnotations'),
            (dict(gt_bboxes=BOXES, gt_masks=None),
             'ShiftContent moves images and boxes, not masks or maps'),
            (dict(gt_bboxes=BOXES, gt_seg_map=None),
             'ShiftContent moves images and boxes, not masks or maps')]:
        with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
            ShiftContent()(dict(results, img=IMAGE, shift=(1, 1)))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_transform_keeps_the_boxes_type_and_dtype(dtype):
    boxes = ShiftContent()(dict(img=IMAGE, shift=(1, 0.5),
                                gt_bboxes=HorizontalBoxes(torch.tensor(BOXES, dtype=dtype))))
    assert boxes['gt_bboxes'].tensor.dtype == dtype
    array = ShiftContent()(dict(img=IMAGE, shift=(1, 0.5), gt_bboxes=BOXES.astype(np.float32)))
    assert array['gt_bboxes'].dtype == np.float32
    np.testing.assert_array_equal(array['gt_bboxes'], [[2.0, 1.5, 5.0, 5.5]])


class PlainDataset:
    """A dataset as ShiftedDataset reads one (not mmengine's): two 8 x 8 images, a pipeline
    of ShiftContent and then ``last`` (whatever it returns ends the pipeline), metainfo as
    held (not a copy), and its calls of full_init counted."""

    def __init__(self, last=lambda results: dict(data_samples=BaseDataElement())):
        self.pipeline = Compose([ShiftContent(), last])
        self.meta = {'classes': ['a']}
        self.initialisations = 0

    @property
    def metainfo(self):
        return self.meta

    def full_init(self):
        self.initialisations += 1

    def __len__(self):
        return 2

    def get_data_info(self, idx):
        return dict(img=IMAGE, gt_bboxes=BOXES)


def test_wrapper_loads_the_dataset_once_now_or_on_first_use():
    plain = PlainDataset()
    ShiftedDataset(plain, shifts=[(1, 1)])
    assert plain.initialisations == 1
    lazy = PlainDataset()
    wrapper = ShiftedDataset(lazy, shifts=[(1, 1)], lazy_init=True)
    assert lazy.initialisations == 0
    assert len(wrapper) == 4 and len(wrapper) == 4
    wrapper.full_init()
    assert lazy.initialisations == 1


def test_wrapper_keeps_its_own_metainfo():
    plain = PlainDataset()
    wrapper = ShiftedDataset(plain, shifts=[(1, 1)])
    plain.meta['classes'].append('b')
    assert wrapper.metainfo == {'classes': ['a'], 'shifts': ((1.0, 1.0), )}


def test_wrapper_shifts_and_indices():
    wrapper = ShiftedDataset(PlainDataset(), shifts=[(0, 1), (1, 0)])  # one axis only: fine
    assert wrapper.locate(-6) == (0, (0.0, 0.0)) and wrapper.locate(5) == (1, (1.0, 0.0))
    sample = wrapper[-1]['data_samples']
    assert (sample.source_idx, sample.shift) == (1, (1.0, 0.0))
    for idx in (6, -7):
        with pytest.raises(IndexError, match=f'^index {idx} out of range for 6 samples$'):
            wrapper.locate(idx)
    for bad in ([(0, 0)], [(-1, 2)], [(1, -2)], [(1, 1), (1.0, 1.0)]):
        with pytest.raises(ValueError, match='^' + re.escape(
                f'shifts={[tuple(map(float, s)) for s in bad]}: expected distinct (dx, dy) >= 0, '
                'not (0, 0) (the unshifted images come first anyway)') + '$'):
            ShiftedDataset(PlainDataset(), shifts=bad)


def test_wrapper_says_what_the_pipeline_lacks():
    without = 'ShiftedDataset expected a ShiftContent in the dataset\'s pipeline, right after ' \
              'LoadImageFromFile and LoadAnnotations: without it the images would not move'
    for dataset in (object(), type('Transforms', (), dict(pipeline=object()))()):
        with pytest.raises(ValueError, match=f'^{re.escape(without)}$'):
            ShiftedDataset(dataset)
    dropped = ShiftedDataset(PlainDataset(lambda results: None), shifts=[(1, 1)])
    with pytest.raises(RuntimeError,
                       match=re.escape('the pipeline dropped sample 3 (image 1 at shift '
                                       '(1.0, 1.0))') + '$'):
        dropped[3]
    packer = 'ShiftedDataset expected the pipeline to end in a packer that returns ' \
             'data_samples (PackDetInputs)'
    for last in (lambda results: [results], lambda results: dict(inputs=results)):
        with pytest.raises(TypeError, match=f'^{re.escape(packer)}$'):
            ShiftedDataset(PlainDataset(last), shifts=[(1, 1)])[0]

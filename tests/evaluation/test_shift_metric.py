"""Shift consistency through mmengine: the ShiftContent transform against shift_image and
shift_boxes, the ShiftedDataset wrapper, ShiftConsistencyMetric against shift_consistency() on
stub detections, and a digits config whose val_evaluator names the metric, run by a Runner."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_module

require_module('mmdet')

from mmdet.datasets.transforms import LoadImageFromNDArray, PackDetInputs  # noqa: E402
from mmdet.structures.bbox import HorizontalBoxes  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import BaseDataset  # noqa: E402
from mmengine.evaluator import Evaluator  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import mmlstride  # noqa: E402,F401  (registrations)
from mmlstride.evaluation import (HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS,  # noqa: E402
                                  ShiftConsistencyMetric, ShiftContent, ShiftedDataset,
                                  shift_boxes, shift_consistency, shift_image, shift_report,
                                  with_shift_content)

REPO = Path(__file__).resolve().parents[2]
# The detection study's digits config.
DIGITS_CONFIG = str(REPO / 'projects/lsconv_study/configs/digits/retinanet_r18n_digits_fixed.py')
SHIFTS = WHOLE_PIXEL_SHIFTS + HALF_PIXEL_SHIFTS
CANVAS = 64


def quarter_pixel_scenes(count: int = 4):
    """Random images and boxes on quarter pixels (exact in float32, as the pipeline keeps
    them); image 0 also has an object in the corner that shifts of 3.5 and more push out."""
    rng = np.random.default_rng(3)
    images, truths = [], []
    for _ in range(count):
        corners = np.round(rng.uniform(4, CANVAS - 28, (3, 2)) * 4) / 4
        sides = np.round(rng.uniform(10, 16, (3, 2)) * 4) / 4
        images.append(rng.integers(0, 256, (CANVAS, CANVAS, 3), dtype=np.uint8))
        truths.append((np.concatenate([corners, corners + sides], axis=1),
                       rng.integers(0, 5, 3)))
    truths[0] = (np.concatenate([truths[0][0], [[56, 56, 63, 63]]]),
                 np.append(truths[0][1], 1))
    return images, truths


def stub_detections(shift_index: int, image: int, truth):
    """A detector's output on image ``image`` at ``(no shift,) + SHIFTS`` [shift_index]: the
    visible shifted truth at score 0.9, perfect on image 0, with on purpose: image 1 misses
    object 0 at shifts 1, 3 and 9; image 2 puts object 1 5 px off at even shifts and adds a
    wrong-class box; image 3 scores object 2 below the threshold without a shift and gives
    object 0 a wrong class at shift 5."""
    dx, dy = (((0.0, 0.0),) + SHIFTS)[shift_index]
    boxes, labels = truth
    moved, visible = shift_boxes(boxes, dx, dy, CANVAS, CANVAS)
    keep = visible.copy()
    boxes, labels = moved.copy(), np.array(labels)
    scores = np.full(len(boxes), 0.9)
    if image == 1 and shift_index in (1, 3, 9):
        keep[0] = False
    if image == 2:
        if shift_index % 2 == 0 and shift_index:
            boxes[1] += [5, 0, 5, 0]
        boxes, labels = np.concatenate([boxes, [[30, 30, 42, 42]]]), np.append(labels, 4)
        scores, keep = np.append(scores, 0.8), np.append(keep, True)
    if image == 3:
        scores[2] = 0.25 if shift_index == 0 else 0.9
        labels[0] = (labels[0] + 1) % 5 if shift_index == 5 else labels[0]
    return boxes[keep], scores[keep], labels[keep]


class StubPredict:
    """``stub_detections`` as the predict function of shift_consistency (no shift first, then
    each shift in order)."""

    def __init__(self, truths):
        self.truths, self.calls = truths, 0

    def __call__(self, images):
        self.calls += 1
        return [stub_detections(self.calls - 1, i, t) for i, t in enumerate(self.truths)]


class InMemoryDataset(BaseDataset):
    """Images with their loaded ground truth, as LoadAnnotations leaves it."""
    METAINFO = {'classes': ('a', 'b', 'c', 'd', 'e')}

    def __init__(self, images, truths, pipeline):
        self.images, self.truths = images, truths
        super().__init__(pipeline=pipeline, serialize_data=False, test_mode=True)

    def load_data_list(self):
        return [dict(img=image, img_id=i, gt_bboxes=HorizontalBoxes(torch.tensor(boxes)),
                     gt_bboxes_labels=np.asarray(labels, np.int64),
                     gt_ignore_flags=np.zeros(len(labels), bool))
                for i, (image, (boxes, labels)) in enumerate(zip(self.images, self.truths))]


def shifted_set(images, truths, shifts=SHIFTS):
    pipeline = [LoadImageFromNDArray(), ShiftContent(), PackDetInputs()]
    return ShiftedDataset(InMemoryDataset(images, truths, pipeline), shifts=shifts)


def test_metric_gives_shift_consistencys_numbers():
    images, truths = quarter_pixel_scenes()
    expected = shift_consistency(StubPredict(truths), images, truths, 5, SHIFTS)
    dataset = shifted_set(images, truths)
    metric = ShiftConsistencyMetric()
    evaluator = Evaluator(metric)
    evaluator.dataset_meta = dataset.metainfo
    shifts = ((0.0, 0.0),) + SHIFTS
    for idx in np.random.default_rng(0).permutation(len(dataset)):  # any order
        sample = dataset[int(idx)]['data_samples']
        boxes, scores, labels = stub_detections(shifts.index(sample.shift), sample.source_idx,
                                                truths[sample.source_idx])
        sample.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                             scores=torch.tensor(scores, dtype=torch.float32),
                                             labels=torch.tensor(labels))
        evaluator.process([sample])
    metrics = evaluator.evaluate(len(dataset))
    report = metric.report
    assert report['images'] == 4
    assert {k: report[k] for k in expected} == expected
    # the stub's misses show: not every shift is consistent, the corner object leaves
    assert min(r['consistency'] for r in expected['per_shift']) < 1
    assert [r['objects'] for r in expected['per_shift']][:4] == [13, 13, 13, 13]
    assert expected['per_shift'][4]['objects'] == 12 and expected['per_shift'][-1]['objects'] == 12
    for part in ('whole', 'fractional'):
        for key in ('consistency', 'mAP_mean', 'mAP_spread'):
            assert metrics[f'shift/{part}_{key}'] == expected[part][key]
    for row in expected['per_shift']:
        name = f"{row['shift'][0]:g}_{row['shift'][1]:g}"
        assert metrics[f'shift/mAP_{name}'] == row['mAP']
        assert metrics[f'shift/consistency_{name}'] == row['consistency']
    assert len(metrics) == 6 + 2 * (1 + len(SHIFTS))


def test_metric_refuses_truth_that_did_not_move():
    images, truths = quarter_pixel_scenes(1)
    dataset = shifted_set(images, truths, shifts=[(2.0, 2.0)])
    metric = ShiftConsistencyMetric()
    metric.dataset_meta = dataset.metainfo
    for idx in range(len(dataset)):
        sample = dataset[idx]['data_samples']
        sample.gt_instances = dataset[0]['data_samples'].gt_instances  # the unshifted truth
        sample.pred_instances = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                             labels=torch.zeros(0, dtype=torch.long))
        metric.process(None, [sample.to_dict()])
    with pytest.raises(ValueError, match='not the unshifted one moved by the shift'):
        metric.evaluate(len(dataset))


@pytest.mark.parametrize('shift', [(3.0, 1.0), (1.5, 0.5)])
def test_transform_shifts_like_shift_image_and_shift_boxes(shift):
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    boxes = np.array([[2, 2, 6, 6], [10, 0, 20, 10], [14, 4, 20, 8], [15, 4, 20, 8]], float)
    labels, flags = np.array([3, 1, 4, 2]), np.array([False, True, False, False])
    for box_type in (HorizontalBoxes, np.float32):
        out = ShiftContent()(dict(img=image.copy(), gt_bboxes=box_type(boxes), shift=shift,
                                  gt_bboxes_labels=labels, gt_ignore_flags=flags))
        assert out['img'].dtype == np.float32
        np.testing.assert_array_equal(out['img'], shift_image(image, *shift))
        assert not np.array_equal(out['img'], image)
        moved, visible = shift_boxes(boxes, *shift, width=20, height=12)
        assert visible.tolist() == [True, True, True, shift[0] < 2]  # the last is pushed out
        kept = getattr(out['gt_bboxes'], 'tensor', out['gt_bboxes'])
        np.testing.assert_array_equal(np.asarray(kept), moved[visible].astype(np.float32))
        assert out['gt_bboxes_labels'].tolist() == labels[visible].tolist()
        assert out['gt_ignore_flags'].tolist() == flags[visible].tolist()


def test_transform_without_shift_and_out_of_place():
    image, boxes = np.ones((8, 8, 3), np.uint8), HorizontalBoxes(torch.tensor([[-1., 0, 4, 4]]))
    untouched = dict(img=image, gt_bboxes=boxes)
    assert ShiftContent()(untouched)['img'] is image
    out = ShiftContent()(dict(img=image, gt_bboxes=boxes, shift=(0.0, 0.0)))
    assert out['img'].dtype == np.float32 and out['gt_bboxes'] is boxes  # as loaded
    with pytest.raises(ValueError, match='place it before Resize'):
        ShiftContent()(dict(img=image, gt_bboxes=boxes, shift=(1, 1), scale_factor=(1., 1.)))
    with pytest.raises(ValueError, match='place it after LoadAnnotations'):
        ShiftContent()(dict(img=image, shift=(1, 1)))


def test_wrapper_yields_each_image_unshifted_then_at_each_shift():
    images, truths = quarter_pixel_scenes(2)
    dataset = shifted_set(images, truths, shifts=[(1.0, 1.0), (0.5, 0.5)])
    assert len(dataset) == 6 and dataset.metainfo['shifts'] == ((1.0, 1.0), (0.5, 0.5))
    seen = [(s.source_idx, s.shift) for s in (dataset[i]['data_samples'] for i in range(6))]
    assert seen == [(0, (0.0, 0.0)), (1, (0.0, 0.0)), (0, (1.0, 1.0)), (1, (1.0, 1.0)),
                    (0, (0.5, 0.5)), (1, (0.5, 0.5))]
    np.testing.assert_array_equal(dataset[5]['inputs'].permute(1, 2, 0).numpy(),
                                  shift_image(images[1], 0.5, 0.5))
    plain = InMemoryDataset(images, truths, [LoadImageFromNDArray(), PackDetInputs()])
    with pytest.raises(ValueError, match='expected a ShiftContent'):
        ShiftedDataset(plain)
    for bad in ([(0, 0)], [(-1, 2)], [(1, 1), (1.0, 1.0)]):
        with pytest.raises(ValueError, match='expected distinct'):
            shifted_set(images, truths, shifts=bad)


def test_with_shift_content_moves_loading_first():
    pipeline = Config.fromfile(DIGITS_CONFIG).test_pipeline
    types = [getattr(s, 'get', lambda k: type(s).__name__)('type')
             for s in with_shift_content(pipeline)]
    assert types == ['LoadImageFromFile', 'LoadAnnotations', 'ShiftContent', 'Resize',
                     'PackDetInputs']
    assert with_shift_content(with_shift_content(pipeline))[2].__class__ is ShiftContent


def test_with_shift_content_reads_every_form_of_a_step():
    """Steps as type names (scoped or not), as classes, as transform objects: loading steps
    first whatever the form; a ShiftContent in any form is kept as the only one; the input
    pipeline is left as it was."""
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets.transforms import LoadAnnotations, Resize
    pipeline = [dict(type='Resize', scale=[8, 8]), dict(type=LoadImageFromFile),
                dict(type='mmdet.LoadAnnotations'), LoadAnnotations(), Resize(scale=(8, 8)),
                dict(scale=(4, 4))]
    out = with_shift_content(pipeline)
    assert [s if isinstance(s, dict) else type(s) for s in out] == [
        dict(type=LoadImageFromFile), dict(type='mmdet.LoadAnnotations'), LoadAnnotations,
        ShiftContent, dict(type='Resize', scale=[8, 8]), Resize, dict(scale=(4, 4))]
    out[4]['scale'][0] = 2
    assert pipeline[0] == dict(type='Resize', scale=[8, 8])
    for given in (dict(type='ShiftContent'), dict(type='mmlstride.ShiftContent'),
                  dict(type=ShiftContent), ShiftContent()):
        kept = with_shift_content([dict(type='Resize', scale=(8, 8)), given])
        assert len(kept) == 2, given
        assert kept[1] == given if isinstance(given, dict) else isinstance(kept[1], ShiftContent)


def test_evaluation_imports_its_openmmlab_parts_on_first_use():
    """The names that need mmdet resolve, at first use, to their modules' objects."""
    import mmlstride.evaluation
    from mmlstride.evaluation import shift_metric, shifted_dataset
    assert mmlstride.evaluation.ShiftConsistencyMetric is shift_metric.ShiftConsistencyMetric
    assert mmlstride.evaluation.ShiftContent is shifted_dataset.ShiftContent
    assert mmlstride.evaluation.ShiftedDataset is shifted_dataset.ShiftedDataset
    assert mmlstride.evaluation.with_shift_content is shifted_dataset.with_shift_content


def test_evaluation_names_a_missing_attribute():
    import mmlstride.evaluation
    with pytest.raises(AttributeError, match="module 'mmlstride.evaluation' has no attribute "
                                             "'nothing'"):
        mmlstride.evaluation.nothing


def digits_predict(model, meta_keys):
    """Like the former tools/shift_consistency.py: arrays through LoadImageFromNDArray,
    Resize and PackDetInputs, then the model's test_step."""
    from mmcv.transforms import Compose, Resize
    from mmengine.dataset import pseudo_collate
    pipeline = Compose([LoadImageFromNDArray(), Resize(scale=(128, 128), keep_ratio=True),
                        PackDetInputs(meta_keys=meta_keys)])

    def predict(images):
        batch = pseudo_collate([pipeline(dict(img=image, img_id=i))
                                for i, image in enumerate(images)])
        with torch.no_grad():
            return [(s.pred_instances.bboxes.numpy(), s.pred_instances.scores.numpy(),
                     s.pred_instances.labels.numpy()) for s in model.test_step(batch)]
    return predict


def test_digits_config_evaluates_through_the_runner(tmp_path):
    """A digits config whose val set is a ShiftedDataset and whose val_evaluator is the
    metric: Runner.val() gives shift_consistency()'s numbers for the same (untrained)
    model on the same images, 96 px canvases resized to 128."""
    import mmcv
    from mmengine.runner import Runner
    cfg = Config.fromfile(DIGITS_CONFIG)
    inner = cfg.val_dataloader.dataset
    inner.update(data_root=str(tmp_path / 'data'), generation=dict(num_train=1, num_val=8,
                                                                   size=96))
    meta_keys = cfg.test_pipeline[-1].meta_keys
    inner.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                      dict(type='ShiftContent'),
                      dict(type='Resize', scale=(128, 128), keep_ratio=True),
                      dict(type='PackDetInputs', meta_keys=meta_keys)]
    shifts = [(1.0, 1.0), (2.5, 2.5), (40.0, 40.0)]
    cfg.val_dataloader.dataset = dict(type='ShiftedDataset', dataset=inner, shifts=shifts)
    cfg.val_evaluator = dict(type='ShiftConsistencyMetric', score_thr=0.0)
    cfg.model.test_cfg.score_thr = 0.0  # an untrained model's scores are low
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                'test_dataloader', 'test_cfg', 'test_evaluator'):
        cfg[key] = None
    cfg.custom_hooks = []
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'visualizer:{tmp_path}'
    runner = Runner.from_cfg(cfg)
    metrics = runner.val()
    report = runner.val_loop.evaluator.metrics[0].report

    annotations = json.loads((tmp_path / 'data/annotations/val.json').read_text())
    images, truths = [], []
    for image in annotations['images']:
        images.append(mmcv.imread(str(tmp_path / 'data/val' / image['file_name'])))
        objects = [a for a in annotations['annotations'] if a['image_id'] == image['id']]
        truths.append((np.array([[x, y, x + w, y + h] for x, y, w, h in
                                 (a['bbox'] for a in objects)]).reshape(-1, 4),
                       np.array([a['category_id'] - 1 for a in objects])))
    expected = shift_consistency(digits_predict(runner.model, meta_keys), images, truths, 10,
                                 shifts, score_thr=0.0)
    assert report['images'] == 8 and len(report['per_shift']) == 4
    objects = [row['objects'] for row in expected['per_shift']]
    assert objects[0] == len(annotations['annotations']) > objects[-1]
    assert [row['objects'] for row in report['per_shift']] == objects
    assert max(row['mAP'] for row in expected['per_shift']) > 0  # something to compare
    for got, want in zip(report['per_shift'], expected['per_shift']):
        assert got['shift'] == want['shift']
        assert got['mAP'] == pytest.approx(want['mAP'], abs=1e-9)
        assert got['consistency'] == pytest.approx(want['consistency'], abs=1e-9)
    assert metrics['shift/whole_consistency'] == pytest.approx(expected['whole']['consistency'])
    assert metrics['shift/fractional_mAP_mean'] == pytest.approx(
        expected['fractional']['mAP_mean'])


def test_shift_report_compares_each_object_with_itself():
    """The report both the metric and shift_consistency() give: object 0 (matched without a
    shift) is pushed out, object 1 stays unmatched: consistent, one object counted."""
    truth = (np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1]))
    found = (np.array([[0.0, 0, 10, 10]]), np.array([0.9]), np.array([0]))
    nothing = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    visible = np.array([False, True])
    report = shift_report([(8.0, 8.0)], [[truth], [(truth[0][visible] + 8, truth[1][visible])]],
                          [[found], [nothing]], [[visible]], num_classes=2)
    assert [(r['objects'], r['consistency']) for r in report['per_shift']] == [(2, 1.0), (1, 1.0)]
    assert report['whole'] == {'mAP_mean': pytest.approx(25.0), 'mAP_spread': pytest.approx(50.0),
                               'consistency': 1.0}
    with pytest.raises(ValueError, match='1 shifts expected truths'):
        shift_report([(8.0, 8.0)], [[truth]], [[found]], [], num_classes=2)


def test_metric_prefix_is_shift_unless_given():
    assert ShiftConsistencyMetric().prefix == 'shift'
    assert ShiftConsistencyMetric(prefix='moved').prefix == 'moved'


def metric_sample(source, shift, boxes, labels, shape=(40, 60), **meta):
    """A data sample as the metric reads it (``to_dict`` of a packed sample with predictions):
    detections equal to the ground truth."""
    boxes, labels = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64)
    return dict(meta, shift=shift, source_idx=source, ori_shape=shape,
                gt_instances=dict(bboxes=boxes, labels=labels),
                pred_instances=dict(bboxes=boxes, scores=np.full(len(labels), 0.9),
                                    labels=labels))


def evaluated(metric, samples, classes=('a', 'b')):
    metric.dataset_meta = dict(classes=classes)
    metric.process(None, samples)
    return metric.evaluate(len(samples))


def test_metric_arguments():
    metric = ShiftConsistencyMetric(score_thr=1, collect_dir='/tmp/m')
    assert (metric.score_thr, metric.collect_device, metric.collect_dir) == (1, 'cpu', '/tmp/m')
    assert ShiftConsistencyMetric(collect_device='gpu').collect_device == 'gpu'
    assert metric.report is None and ShiftConsistencyMetric(score_thr=0).score_thr == 0
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf'^score_thr={bad}: expected a value in \[0, 1\]$'):
            ShiftConsistencyMetric(score_thr=bad)


def test_metric_takes_the_shifts_in_the_order_they_came_without_the_datasets():
    """Without ``shifts`` in dataset_meta, the shifts in the order of the first sample of each;
    (h, w, channels) shapes and a scale_factor (the truth in the resized image's pixels)."""
    box, scale = np.array([[10.0, 8.0, 30.0, 20.0]]), (2.0, 0.5)
    samples = [metric_sample(0, shift, shift_boxes(box, *shift, 60, 40)[0] * np.tile(scale, 2),
                             [1], shape=(40, 60, 3), scale_factor=scale)
               for shift in [(2.0, 1.0), (0.0, 0.0), (0.5, 0.0), (2.0, 1.0)]]
    metric = ShiftConsistencyMetric(score_thr=0.95)
    metrics = evaluated(metric, samples)
    assert [row['shift'] for row in metric.report['per_shift']] == [(0, 0), (2, 1), (0.5, 0)]
    assert metric.report['score_thr'] == 0.95 and metric.report['images'] == 1
    assert {'shift/mAP_2_1', 'shift/consistency_0.5_0', 'shift/mAP_0_0'} <= set(metrics)


def test_metric_names_what_it_misses():
    with pytest.raises(KeyError, match=re.escape(
            "ShiftConsistencyMetric expected samples of a ShiftedDataset with ['source_idx', "
            "'ori_shape'] in their metainfo")):
        ShiftConsistencyMetric().process(None, [dict(shift=(0.0, 0.0))])
    for meta in (None, {}, dict(shifts=[(1.0, 1.0)])):
        metric = ShiftConsistencyMetric()
        metric.dataset_meta = meta
        with pytest.raises(ValueError, match='^ShiftConsistencyMetric expected dataset_meta '
                                             'with the classes$'):
            metric.compute_metrics([])
    shifts = [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    box = [[10.0, 8.0, 30.0, 20.0]]
    # 3 images, each unshifted; at the shifts only image 2: 6 samples missing, then 5.
    present = [metric_sample(i, (0.0, 0.0), box, [0]) for i in range(3)] + [
        metric_sample(2, s, shift_boxes(np.array(box), *s, 60, 40)[0], [0]) for s in shifts]
    with pytest.raises(ValueError, match=re.escape(
            'ShiftConsistencyMetric found no sample of (image, shift) [(0, (1.0, 1.0)), '
            '(1, (1.0, 1.0)), (0, (2.0, 2.0)), (1, (2.0, 2.0)), (0, (3.0, 3.0))] ...')):
        evaluated(ShiftConsistencyMetric(), present)
    extra = metric_sample(0, (1.0, 1.0), shift_boxes(np.array(box), 1.0, 1.0, 60, 40)[0], [0])
    with pytest.raises(ValueError, match=re.escape(
            '(1, (1.0, 1.0)), (0, (2.0, 2.0)), (1, (2.0, 2.0)), (0, (3.0, 3.0)), '
            '(1, (3.0, 3.0))]') + '$'):
        evaluated(ShiftConsistencyMetric(), present + [extra])


def test_metric_refuses_truth_off_by_more_than_its_tolerance_at_any_size():
    """The shifted truth must be the moved unshifted truth within 0.01 px, wherever it lies
    (an absolute tolerance), with the message that says where to put ShiftContent."""
    box = np.array([[1500.0, 1500.0, 1900.0, 1990.0]])
    moved = shift_boxes(box, 1.0, 1.0, 2000, 2000)[0]
    reference = metric_sample(0, (0.0, 0.0), box, [0], shape=(2000, 2000))
    within = metric_sample(0, (1.0, 1.0), moved + 0.009, [0], shape=(2000, 2000))
    assert 'shift/mAP_1_1' in evaluated(ShiftConsistencyMetric(), [reference, within])
    off = metric_sample(0, (1.0, 1.0), moved + 0.012, [0], shape=(2000, 2000))
    with pytest.raises(ValueError, match=re.escape(
            'image 0 at shift (1.0, 1.0): its ground truth is not the unshifted one moved by '
            'the shift; expected ShiftContent in the pipeline right after LoadImageFromFile '
            'and LoadAnnotations')):
        evaluated(ShiftConsistencyMetric(), [reference, off])

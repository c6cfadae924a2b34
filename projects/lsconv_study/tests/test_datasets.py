"""The study's generated datasets: deterministic, disjoint train and val digits, the sizes and
clutter they promise, and ground truth that scores full mAP as detections."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_module

require_module('mmdet')

from projects.lsconv_study.lsconv_study.datasets import (  # noqa: E402
    ensure_scaled_digits_detection, generate_digits_detection, generate_scaled_digits_detection)


def record_canvas_pools(monkeypatch, module) -> list:
    """The digit pools that ``module._canvas`` is given, one per image, as it draws them."""
    pools = []
    canvas = module._canvas

    def recording_canvas(rng, images, labels, pool, size):
        pools.append(pool)
        return canvas(rng, images, labels, pool, size)

    monkeypatch.setattr(module, '_canvas', recording_canvas)
    return pools


def assert_disjoint_digit_pools(pools: list, num_train: int) -> None:
    """Train images (the first num_train) draw from one pool, 80% of scikit-learn's 1797
    digits, and val images from the other 20%."""
    train, val = {tuple(p) for p in pools[:num_train]}, {tuple(p) for p in pools[num_train:]}
    assert len(train) == len(val) == 1
    train, val = set(train.pop()), set(val.pop())
    assert not train & val and len(train | val) == 1797 and len(train) == int(0.8 * 1797)


def tree_digest(root: Path) -> dict:
    """sha256 of every file under root, by relative path."""
    files = sorted(p for p in root.rglob('*') if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_digits_dataset_is_deterministic(tmp_path):
    generate_digits_detection(str(tmp_path / 'a'), num_train=5, num_val=3)
    generate_digits_detection(str(tmp_path / 'b'), num_train=5, num_val=3)
    generate_digits_detection(str(tmp_path / 'c'), num_train=5, num_val=3, seed=1)
    assert tree_digest(tmp_path / 'a') == tree_digest(tmp_path / 'b')
    assert tree_digest(tmp_path / 'a') != tree_digest(tmp_path / 'c')
    coco = json.loads((tmp_path / 'a' / 'annotations' / 'train.json').read_text())
    assert len(coco['images']) == 5 and coco['annotations']
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
        assert 1 <= ann['category_id'] <= 10


@pytest.mark.parametrize('generate', [generate_digits_detection,
                                      generate_scaled_digits_detection])
def test_ground_truth_as_detections_scores_full_map(tmp_path, generate):
    """mmdet's CocoMetric, given every ground-truth box as a detection, reports mAP 1.0: each
    object can be found (pycocotools never counts a ground truth of annotation id 0)."""
    from mmdet.evaluation import CocoMetric
    generate(str(tmp_path), num_train=2, num_val=6)
    ann_file = str(tmp_path / 'annotations' / 'val.json')
    coco = json.loads(Path(ann_file).read_text())
    metric = CocoMetric(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = {'classes': tuple(str(d) for d in range(10))}
    for image in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)])
        metric.process({}, [{'img_id': image['id'], 'ori_shape': (image['height'], image['width']),
                             'pred_instances': {
                                 'bboxes': boxes, 'scores': torch.ones(len(anns)),
                                 'labels': torch.tensor([a['category_id'] - 1 for a in anns])}}])
    assert metric.evaluate(len(coco['images']))['coco/bbox_mAP'] == pytest.approx(1.0)


def test_digits_dataset_has_1_to_4_digits_and_disjoint_samples(tmp_path, monkeypatch):
    """Every image has 1-4 digits (all counts occur), and train and val canvases draw from
    disjoint digit samples, 80% and 20% of scikit-learn's 1797."""
    from projects.lsconv_study.lsconv_study.datasets import digits_detection
    pools = record_canvas_pools(monkeypatch, digits_detection)
    generate_digits_detection(str(tmp_path / 'd'), num_train=60, num_val=20)
    for split, count in (('train', 60), ('val', 20)):
        coco = json.loads((tmp_path / 'd' / 'annotations' / f'{split}.json').read_text())
        per_image = [sum(a['image_id'] == image['id'] for a in coco['annotations'])
                     for image in coco['images']]
        assert len(per_image) == count and min(per_image) >= 1 and max(per_image) <= 4
        if split == 'train':
            assert set(per_image) == {1, 2, 3, 4}
    assert_disjoint_digit_pools(pools, num_train=60)


def test_scaled_digits_dataset_is_deterministic(tmp_path):
    generate_scaled_digits_detection(str(tmp_path / 'a'), num_train=4, num_val=2)
    generate_scaled_digits_detection(str(tmp_path / 'b'), num_train=4, num_val=2)
    generate_scaled_digits_detection(str(tmp_path / 'c'), num_train=4, num_val=2, seed=1)
    assert tree_digest(tmp_path / 'a') == tree_digest(tmp_path / 'b')
    assert tree_digest(tmp_path / 'a') != tree_digest(tmp_path / 'c')
    for split in ('train', 'val'):
        coco = json.loads((tmp_path / 'a' / 'annotations' / f'{split}.json').read_text())
        assert all(image['width'] == image['height'] == 256 for image in coco['images'])
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256 and w > 0 and h > 0
            assert 1 <= ann['category_id'] <= 10
    ensure_scaled_digits_detection(str(tmp_path / 'a'), num_train=4, num_val=2)  # there
    with pytest.raises(FileExistsError, match='data_root'):
        ensure_scaled_digits_detection(str(tmp_path / 'a'), num_train=5, num_val=2)


def test_scaled_digits_span_8x_in_size_on_cluttered_photographs(tmp_path, monkeypatch):
    """Digits of 12 to 96 px (each image 1-8 of them, most of the range used), from disjoint
    train and val samples, on photographs (many distinct colours outside the boxes) that carry
    strokes brighter than the darkened photograph."""
    from PIL import Image
    from projects.lsconv_study.lsconv_study.datasets import scaled_digits_detection
    pools = record_canvas_pools(monkeypatch, scaled_digits_detection)
    root = tmp_path / 's'
    generate_scaled_digits_detection(str(root), num_train=40, num_val=10)
    sides = []
    for split, count in (('train', 40), ('val', 10)):
        coco = json.loads((root / 'annotations' / f'{split}.json').read_text())
        per_image = [[a for a in coco['annotations'] if a['image_id'] == image['id']]
                     for image in coco['images']]
        assert len(per_image) == count and all(1 <= len(boxes) <= 8 for boxes in per_image)
        for image, boxes in zip(coco['images'], per_image):
            pixels = np.asarray(Image.open(root / split / image['file_name']), dtype=np.float32)
            outside = np.ones(pixels.shape[:2], dtype=bool)
            for ann in boxes:
                x, y, w, h = ann['bbox']
                outside[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = False
                sides.append(max(w, h))
            background = pixels[outside]
            # a photograph (many distinct colours), with strokes above its darkened maximum
            assert len(np.unique(background, axis=0)) > 500 and background.max() > 90, image
    assert min(sides) <= 16 and max(sides) >= 6 * min(sides), (min(sides), max(sides))
    assert_disjoint_digit_pools(pools, num_train=40)

"""Shift consistency of a detector: how much its detections change when the image moves.

The image content is translated right and down by ``(dx, dy)`` pixels (the canvas keeps its
size: zeros come in at the top and left, the bottom and right are cropped; a fractional shift
interpolates bilinearly), and the ground-truth boxes move with it. For every shift this
module reports the detector's COCO mAP on the shifted images and its consistency: the
fraction of ground-truth objects whose match is the same with and without the shift. An
object is matched when some detection of its class scores at least ``score_thr`` and overlaps
its box with IoU >= 0.5. An object that the shift pushes more than half out of the canvas is
left out of that shift (its box is clipped to the canvas otherwise).

Torch-free: ``predict`` is any function from a list of images to their detections.
:func:`shift_report` computes the report from what was found at each shift; it is shared
with the mmengine metric (:mod:`mmlstride.evaluation.shift_metric`).
"""
import contextlib
import io
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

# Detections of one image: boxes (n, 4) as x0, y0, x1, y1 in pixels, scores (n,), labels (n,).
Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]
# Ground truth of one image: boxes (m, 4) as x0, y0, x1, y1, labels (m,).
GroundTruth = Tuple[np.ndarray, np.ndarray]

WHOLE_PIXEL_SHIFTS = tuple((float(k), float(k)) for k in range(1, 8))
HALF_PIXEL_SHIFTS = tuple((k + 0.5, k + 0.5) for k in range(4))
DEFAULT_SCORE_THR = 0.3
MATCH_IOU = 0.5
MIN_VISIBLE = 0.5


def shift_image(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` (H, W[, C]) with its content moved ``dx`` pixels right and ``dy`` down, as
    float32: whole pixels are copied, a fraction blends neighbours bilinearly; zeros fill
    what comes in."""
    if dx < 0 or dy < 0:
        raise ValueError(f'(dx, dy)={(dx, dy)} expected shifts >= 0 (right and down)')
    out = image.astype(np.float32)
    for axis, shift in ((0, dy), (1, dx)):
        whole = int(np.floor(shift))
        fraction = shift - whole
        out = _roll_in_zeros(out, axis, whole)
        if fraction:
            out = (1 - fraction) * out + fraction * _roll_in_zeros(out, axis, 1)
    return out


def _roll_in_zeros(image: np.ndarray, axis: int, steps: int) -> np.ndarray:
    if steps == 0:
        return image
    out = np.zeros_like(image)
    size = image.shape[axis]
    if steps < size:
        source = [slice(None)] * image.ndim
        target = [slice(None)] * image.ndim
        source[axis], target[axis] = slice(0, size - steps), slice(steps, size)
        out[tuple(target)] = image[tuple(source)]
    return out


def shift_boxes(boxes: np.ndarray, dx: float, dy: float, width: int,
                height: int) -> Tuple[np.ndarray, np.ndarray]:
    """The boxes moved by (dx, dy) and clipped to the canvas, and which of them keep at least
    half their area inside it."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    moved = boxes + np.array([dx, dy, dx, dy])
    clipped = np.clip(moved, 0, [width, height, width, height])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped, visible >= MIN_VISIBLE * area


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), as (n, m)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def matched(truth: GroundTruth, detections: Detections, score_thr: float) -> np.ndarray:
    """Per ground-truth object: whether a detection of its class with score >= ``score_thr``
    overlaps it with IoU >= 0.5."""
    gt_boxes, gt_labels = (np.asarray(v) for v in truth)
    boxes, scores, labels = (np.asarray(v) for v in detections)
    keep = scores >= score_thr
    boxes, labels = boxes[keep].reshape(-1, 4), labels[keep]
    if not len(gt_boxes) or not len(boxes):
        return np.zeros(len(gt_boxes), dtype=bool)
    overlaps = box_iou(gt_boxes.reshape(-1, 4).astype(np.float64), boxes.astype(np.float64))
    same_class = gt_labels[:, None] == labels[None, :]
    return ((overlaps >= MATCH_IOU) & same_class).any(axis=1)


def coco_map(truths: Sequence[GroundTruth], detections: Sequence[Detections],
             num_classes: int) -> float:
    """COCO bbox mAP (IoU 0.5:0.95, in percent) of ``detections`` against ``truths`` (one
    entry per image), computed by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, annotations, results = [], [], []
    for image_id, ((gt_boxes, gt_labels), (boxes, scores, labels)) in enumerate(
            zip(truths, detections)):
        images.append({'id': image_id})
        for box, label in zip(np.asarray(gt_boxes).reshape(-1, 4), gt_labels):
            width, height = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                                'category_id': int(label), 'iscrowd': 0,
                                'bbox': [float(box[0]), float(box[1]), width, height],
                                'area': width * height})
        for box, score, label in zip(np.asarray(boxes).reshape(-1, 4), scores, labels):
            results.append({'image_id': image_id, 'category_id': int(label),
                            'score': float(score),
                            'bbox': [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                     float(box[3] - box[1])]})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {'images': images, 'annotations': annotations,
                         'categories': [{'id': c} for c in range(num_classes)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), 'bbox')
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100 * max(float(evaluation.stats[0]), 0.0)


@dataclass
class ShiftResult:
    """One shift's mAP and consistency (None for no shift), and how many objects counted."""
    shift: Tuple[float, float]
    mAP: float
    consistency: float
    objects: int


def shift_consistency(predict: Callable[[List[np.ndarray]], List[Detections]],
                      images: Sequence[np.ndarray], truths: Sequence[GroundTruth],
                      num_classes: int,
                      shifts: Sequence[Tuple[float, float]] = WHOLE_PIXEL_SHIFTS
                      + HALF_PIXEL_SHIFTS,
                      score_thr: float = DEFAULT_SCORE_THR) -> Dict[str, object]:
    """mAP and consistency of ``predict`` on ``images`` at each (dx, dy) of ``shifts``
    against no shift, and their summaries (see :func:`shift_report`). ``predict`` is called
    once without the shift, then once per shift in order."""
    if not len(images) or len(images) != len(truths):
        raise ValueError(f'images ({len(images)}) and truths ({len(truths)}) expected the same '
                         'number of images, at least one')
    truths = [(np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(l))
              for b, l in truths]
    shifted_truths, detections, visibles = [truths], [], []
    detections.append(predict([np.asarray(image, dtype=np.float32) for image in images]))
    for dx, dy in shifts:
        moved = [shift_boxes(boxes, dx, dy, image.shape[1], image.shape[0])
                 for (boxes, _), image in zip(truths, images)]
        shifted_truths.append([(boxes[visible], labels[visible])
                               for (boxes, visible), (_, labels) in zip(moved, truths)])
        visibles.append([visible for _, visible in moved])
        detections.append(predict([shift_image(image, dx, dy) for image in images]))
    return shift_report(shifts, shifted_truths, detections, visibles, num_classes, score_thr)


def shift_report(shifts: Sequence[Tuple[float, float]],
                 truths: Sequence[Sequence[GroundTruth]],
                 detections: Sequence[Sequence[Detections]],
                 visibles: Sequence[Sequence[np.ndarray]], num_classes: int,
                 score_thr: float = DEFAULT_SCORE_THR) -> Dict[str, object]:
    """The report of :func:`shift_consistency` from what was found at each shift.

    ``truths[k][i]`` and ``detections[k][i]`` are image i's ground truth and detections
    without a shift (k = 0) and at ``shifts[k - 1]``; ``visibles[k - 1][i]`` says which of
    image i's unshifted objects ``truths[k][i]`` keeps (in order). Returns ``score_thr``,
    ``per_shift`` (shift, mAP, consistency, objects; no shift first) and the summaries over
    the whole-pixel shifts (``whole``: mean mAP and its spread, max minus min, over no shift
    and these shifts; mean consistency) and over the fractional ones (``fractional``)."""
    if not len(truths) == len(detections) == len(visibles) + 1 == len(shifts) + 1:
        raise ValueError(f'{len(shifts)} shifts expected truths ({len(truths)}) and detections '
                         f'({len(detections)}) for no shift and each shift, visibles '
                         f'({len(visibles)}) for each shift')
    reference_matched = [matched(t, d, score_thr) for t, d in zip(truths[0], detections[0])]
    results = [ShiftResult((0.0, 0.0), coco_map(truths[0], detections[0], num_classes), 1.0,
                           sum(len(labels) for _, labels in truths[0]))]
    for shift, moved_truths, found, visible_of in zip(shifts, truths[1:], detections[1:],
                                                      visibles):
        same, counted = 0, 0
        for truth, visible, detected, before in zip(moved_truths, visible_of, found,
                                                    reference_matched):
            same += int((matched(truth, detected, score_thr) == before[visible]).sum())
            counted += int(visible.sum())
        results.append(ShiftResult((shift[0], shift[1]),
                                   coco_map(moved_truths, found, num_classes),
                                   same / counted if counted else float('nan'), counted))

    def summary(selected: List[ShiftResult]) -> Dict[str, float]:
        maps = [results[0].mAP] + [r.mAP for r in selected]
        return {'mAP_mean': float(np.mean(maps)), 'mAP_spread': float(max(maps) - min(maps)),
                'consistency': float(np.mean([r.consistency for r in selected]))
                if selected else float('nan')}

    whole = [r for r in results[1:] if float(r.shift[0]).is_integer()
             and float(r.shift[1]).is_integer()]
    fractional = [r for r in results[1:] if not any(r is w for w in whole)]
    return {'score_thr': score_thr, 'per_shift': [vars(r) for r in results],
            'whole': summary(whole), 'fractional': summary(fractional)}

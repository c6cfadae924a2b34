"""Shift consistency: the image and box shifts, and the metric on stub detectors whose mAP and
consistency are known (the shifted ground truth itself, and detectors that miss on purpose)."""
import warnings

import numpy as np
import pytest

from mmlstride.evaluation import (HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS, coco_map, matched,
                                  shift_boxes, shift_consistency, shift_image)
from mmlstride.evaluation.shift_consistency import box_iou

SHIFTS = WHOLE_PIXEL_SHIFTS + HALF_PIXEL_SHIFTS


def test_whole_pixel_shift_moves_content_right_and_down():
    image = np.arange(2 * 6 * 5, dtype=np.uint8).reshape(6, 5, 2)
    moved = shift_image(image, 2, 1)
    assert moved.dtype == np.float32 and moved.shape == image.shape
    assert np.array_equal(moved[1:, 2:], image[:-1, :-2])
    assert not moved[:1].any() and not moved[:, :2].any()
    assert not shift_image(image, 5, 0).any()  # shifted out entirely


def test_fractional_shift_is_bilinear():
    image = np.random.default_rng(0).uniform(0, 255, (7, 9)).astype(np.float32)
    moved = shift_image(image, 1.5, 0.25)
    padded = np.pad(image, ((1, 0), (2, 0)))  # the zeros that come in at the top and left
    expected = np.zeros_like(image)
    for (dy, wy) in ((0, 0.75), (1, 0.25)):
        for (dx, wx) in ((1, 0.5), (2, 0.5)):
            expected += wy * wx * padded[1 - dy:1 - dy + 7, 2 - dx:2 - dx + 9]
    np.testing.assert_allclose(moved, expected, rtol=1e-6, atol=1e-4)


def test_negative_shift_is_refused():
    with pytest.raises(ValueError, match=r'\(dx, dy\)=\(-1, 0\) expected shifts >= 0'):
        shift_image(np.zeros((4, 4)), -1, 0)


def test_boxes_move_clip_and_leave_when_mostly_out():
    boxes = np.array([[2, 2, 6, 6], [10, 0, 20, 10], [14, 4, 20, 8], [15, 4, 20, 8]], float)
    moved, visible = shift_boxes(boxes, 3, 1, width=20, height=12)
    np.testing.assert_array_equal(moved, [[5, 3, 9, 7], [13, 1, 20, 11], [17, 5, 20, 9],
                                          [18, 5, 20, 9]])
    # 7 of 10 columns stay, 3 of 6 (half) stay, 2 of 5 do not
    assert visible.tolist() == [True, True, True, False]


def test_match_needs_class_overlap_and_score():
    truth = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([1, 2]))
    detections = (np.array([[1, 1, 10, 10], [20, 20, 30, 30], [20, 20, 24, 24]]),
                  np.array([0.9, 0.2, 0.9]), np.array([1, 2, 2]))
    assert matched(truth, detections, 0.3).tolist() == [True, False]  # low score; IoU 0.16
    assert matched(truth, detections, 0.1).tolist() == [True, True]
    wrong_class = (detections[0], detections[1], np.array([0, 0, 0]))
    assert matched(truth, wrong_class, 0.1).tolist() == [False, False]


def scene(rng: np.random.Generator, size: int = 64, objects: int = 3):
    """A blank image and boxes of random classes well inside it."""
    corners = rng.uniform(4, size - 28, (objects, 2))
    sides = rng.uniform(10, 16, (objects, 2))
    boxes = np.concatenate([corners, corners + sides], axis=1)
    return np.zeros((size, size, 3), np.uint8), (boxes, rng.integers(0, 5, objects))


class ShiftedTruth:
    """A stub detector that returns, at score 1.0, the ground truth as ``shift_consistency``
    moves it: called first on the unshifted images, then once per shift in order. ``miss``
    (shift index, image, object) -> bool drops objects on purpose (shift index 0: no shift)."""

    def __init__(self, truths, shifts, miss=lambda shift, image, obj: False, score=1.0):
        self.truths, self.shifts, self.miss, self.score = truths, shifts, miss, score
        self.calls = 0

    def __call__(self, images):
        shift = self.calls
        dx, dy = (((0.0, 0.0),) + tuple(self.shifts))[shift]
        self.calls += 1
        out = []
        for index, (image, (boxes, labels)) in enumerate(zip(images, self.truths)):
            moved, _ = shift_boxes(boxes, dx, dy, image.shape[1], image.shape[0])
            keep = np.array([not self.miss(shift, index, k) for k in range(len(boxes))], bool)
            out.append((moved[keep], np.full(keep.sum(), self.score), labels[keep]))
        return out


def scenes(count: int = 4):
    rng = np.random.default_rng(1)
    pairs = [scene(rng) for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_detector_returning_the_shifted_truth_is_consistent():
    images, truths = scenes()
    result = shift_consistency(ShiftedTruth(truths, SHIFTS), images, truths, 5, SHIFTS)
    assert len(result['per_shift']) == 1 + len(SHIFTS)
    for row in result['per_shift']:
        assert row['mAP'] == pytest.approx(100) and row['consistency'] == 1.0
        assert row['objects'] == 12
    for part in ('whole', 'fractional'):
        assert result[part] == {'mAP_mean': pytest.approx(100), 'mAP_spread': pytest.approx(0),
                                'consistency': 1.0}


def test_missing_every_object_at_odd_shifts():
    """Whole shifts 1, 3, 5, 7 find nothing: 3 of the 7 whole shifts keep every match; the
    fractional shifts (indices 8-11) find everything."""
    images, truths = scenes()
    stub = ShiftedTruth(truths, SHIFTS, miss=lambda shift, image, obj: shift in (1, 3, 5, 7))
    result = shift_consistency(stub, images, truths, 5, SHIFTS)
    assert result['whole']['consistency'] == pytest.approx(3 / 7)
    assert result['whole']['mAP_mean'] == pytest.approx(100 * 4 / 8)
    assert result['whole']['mAP_spread'] == pytest.approx(100)
    assert result['fractional']['consistency'] == 1.0
    assert [row['mAP'] for row in result['per_shift'][1:5]] == pytest.approx([0, 100, 0, 100])


def test_one_object_found_only_without_shift():
    images, truths = scenes()
    stub = ShiftedTruth(truths, SHIFTS, miss=lambda shift, image, obj: (shift, image, obj) != (
        0, 2, 1) and (image, obj) == (2, 1))
    result = shift_consistency(stub, images, truths, 5, SHIFTS)
    assert result['whole']['consistency'] == pytest.approx(11 / 12)
    assert result['fractional']['consistency'] == pytest.approx(11 / 12)


def test_score_threshold_decides_what_matches():
    """Detections scoring 0.2 match nothing at the default threshold, with or without the
    shift (consistent), yet rank perfectly for mAP; at threshold 0.1 they match."""
    images, truths = scenes()
    for threshold in (0.3, 0.1):
        stub = ShiftedTruth(truths, SHIFTS, score=0.2,
                            miss=lambda shift, image, obj: shift == 2 and obj == 0)
        result = shift_consistency(stub, images, truths, 5, SHIFTS, score_thr=threshold)
        expected = 1.0 if threshold == 0.3 else 8 / 12
        assert result['per_shift'][2]['consistency'] == pytest.approx(expected)
        assert result['per_shift'][1]['mAP'] == pytest.approx(100)


def test_objects_pushed_out_are_left_out():
    image = np.zeros((32, 32, 3), np.uint8)
    truth = (np.array([[2.0, 2, 12, 12], [24, 24, 32, 32]]), np.array([0, 1]))
    stub = ShiftedTruth([truth], ((7.0, 7.0),))
    result = shift_consistency(stub, [image], [truth], 2, ((7.0, 7.0),))
    assert [row['objects'] for row in result['per_shift']] == [2, 1]


def test_coco_map_of_a_half_overlapping_box():
    """A box of IoU 0.62 counts at IoU thresholds 0.5-0.6: 3 of COCO's 10 thresholds."""
    truth = [(np.array([[0.0, 0, 10, 10]]), np.array([0]))]
    detection = [(np.array([[0.0, 0, 10, 6.2]]), np.array([0.9]), np.array([0]))]
    assert coco_map(truth, detection, 1) == pytest.approx(30, abs=0.5)
    assert coco_map(truth, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], 1) == 0.0


def test_objects_leave_through_the_bottom_of_a_wide_image():
    """The canvas is the image's own width and height: 48 x 32 here."""
    image = np.zeros((32, 48, 3), np.uint8)
    truth = (np.array([[2.0, 24, 12, 32], [38, 2, 46, 12]]), np.array([0, 1]))
    stub = ShiftedTruth([truth], ((0.0, 7.0), (7.0, 0.0)))
    result = shift_consistency(stub, [image], [truth], 2, ((0.0, 7.0), (7.0, 0.0)))
    assert [row['objects'] for row in result['per_shift']] == [2, 1, 1]


def test_images_and_truths_must_pair():
    with pytest.raises(ValueError, match=r'images \(1\) and truths \(0\) expected the same '
                       r'number of images, at least one'):
        shift_consistency(lambda images: [], [np.zeros((4, 4))], [], 1)


def test_box_iou_of_hand_computed_pairs():
    """IoU = intersection / union: identical 1, half-shifted 50/150, contained 16/100; boxes
    apart diagonally or only touching along an edge share no area (0)."""
    a = np.array([[0.0, 0, 10, 10]])
    b = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10], [2, 2, 6, 6], [20, 20, 30, 30],
                  [10, 0, 20, 10]])
    expected = [[1, 1 / 3, 0.16, 0, 0]]
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(box_iou(b, a), np.transpose(expected), rtol=1e-12, atol=1e-12)


def test_box_iou_does_not_depend_on_the_unit():
    """IoU is a ratio of areas: boxes a hundred times smaller (well under a pixel) have the
    same IoU; two empty boxes have IoU 0, not nan."""
    a = np.array([[0.0, 0, 10, 10]]) / 100
    b = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10]]) / 100
    np.testing.assert_allclose(box_iou(a, b), [[1, 1 / 3]], rtol=1e-9)
    empty = np.array([[3.0, 3, 3, 3]])
    assert box_iou(empty, empty).tolist() == [[0.0]]


def test_match_at_exactly_the_thresholds():
    """A detection scoring exactly ``score_thr`` counts, and IoU exactly 0.5 (the lower half of
    a 10 x 10 box: 50 / 100) is a match."""
    truth = (np.array([[0.0, 0, 10, 10]]), np.array([3]))
    detections = (np.array([[0.0, 0, 10, 5]]), np.array([0.3]), np.array([3]))
    assert matched(truth, detections, 0.3).tolist() == [True]
    assert matched(truth, detections, 0.31).tolist() == [False]


def test_match_without_detections_is_a_boolean_mask():
    """With nothing detected (or nothing above the threshold) every object is unmatched, as a
    boolean mask that can select the objects."""
    truth = (np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.array([1, 2]))
    for detections in ((np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),
                       (np.array([[0.0, 0, 10, 10]]), np.array([0.1]), np.array([1]))):
        found = matched(truth, detections, 0.3)
        assert found.dtype == bool and found.tolist() == [False, False]
        assert truth[0][found].shape == (0, 4)
        assert truth[0][~found].shape == (2, 4)


def test_coco_map_counts_a_zero_height_object_as_missed():
    """A degenerate (zero-height) ground-truth box overlaps nothing, so of the class's two
    objects one is found: precision 1 at COCO's recall points 0, 0.01, ..., 0.5, i.e. 51 of
    its 101 points, at every IoU threshold."""
    truth = [(np.array([[0.0, 0, 10, 10], [20, 20, 30, 20]]), np.array([0, 0]))]
    detection = [(np.array([[0.0, 0, 10, 10]]), np.array([0.9]), np.array([0]))]
    assert coco_map(truth, detection, 1) == pytest.approx(100 * 51 / 101)


def test_report_names_each_shift_and_sorts_mixed_shifts_as_fractional():
    """Rows come in order, no shift first, with (dx, dy) as given; a shift is whole only when
    both dx and dy are whole. Everything is missed at the first (fractional) shift only."""
    images, truths = scenes()
    shifts = ((0.5, 0.5), (1.0, 0.5), (0.5, 1.0), (2.0, 2.0))
    stub = ShiftedTruth(truths, shifts, miss=lambda shift, image, obj: shift == 1)
    result = shift_consistency(stub, images, truths, 5, shifts)
    assert result['score_thr'] == 0.3
    assert [row['shift'] for row in result['per_shift']] == [(0.0, 0.0), *shifts]
    assert [row['consistency'] for row in result['per_shift']] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert result['whole'] == {'mAP_mean': pytest.approx(100), 'mAP_spread': pytest.approx(0),
                               'consistency': 1.0}
    # fractional: mAP over no shift and the three fractional shifts: 100, 0, 100, 100
    assert result['fractional'] == {'mAP_mean': pytest.approx(75),
                                    'mAP_spread': pytest.approx(100),
                                    'consistency': pytest.approx(2 / 3)}


def test_consistency_is_nan_when_every_object_is_pushed_out():
    """A shift that leaves no object in the canvas has no consistency to measure: nan, with 0
    objects counted."""
    image = np.zeros((32, 32, 3), np.uint8)
    truth = (np.array([[24.0, 24, 32, 32]]), np.array([1]))
    stub = ShiftedTruth([truth], ((7.0, 7.0),))
    result = shift_consistency(stub, [image], [truth], 2, ((7.0, 7.0),))
    row = result['per_shift'][1]
    assert row['objects'] == 0 and np.isnan(row['consistency'])
    assert np.isnan(result['whole']['consistency'])


def test_summary_without_fractional_shifts_is_nan_without_warning():
    """With whole-pixel shifts only, the fractional summary's consistency is nan, given
    directly rather than as numpy's mean of nothing (which warns 'Mean of empty slice')."""
    images, truths = scenes(1)
    shifts = ((1.0, 1.0),)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        result = shift_consistency(ShiftedTruth(truths, shifts), images, truths, 5, shifts)
    assert result['whole']['consistency'] == 1.0
    assert np.isnan(result['fractional']['consistency'])
    assert result['fractional']['mAP_mean'] == pytest.approx(100)


def test_shift_boxes_clips_at_the_near_edges_in_float64():
    """Boxes moved up and left past the canvas are clipped at 0 (not only at its far edges);
    whole-pixel boxes and shifts still give float64 boxes."""
    from mmlstride.evaluation.shift_consistency import shift_boxes
    clipped, keep = shift_boxes(np.array([[2, 3, 10, 9], [1, 1, 3, 3]]), -4, -5, 20, 20)
    assert clipped.dtype == np.float64
    np.testing.assert_array_equal(clipped, [[0, 0, 6, 4], [0, 0, 0, 0]])
    assert keep.tolist() == [True, False]  # 24 of 48 pixels (half is kept), then none
    clipped, keep = shift_boxes(np.array([[2, 3, 10, 9]]), -2, -3, 20, 20)
    np.testing.assert_array_equal(clipped, [[0, 0, 8, 6]])
    assert keep.tolist() == [True]

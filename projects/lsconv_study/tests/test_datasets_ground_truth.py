"""The generated datasets' ground truth, recomputed independently of the generator's own
arithmetic: every box and class of a few hundred images of both datasets, both splits, and
the boxes of the shift-consistency evaluation.

The convention the datasets follow (and these tests state): an object's box is the tight box,
on the canvas, of its digit's ink, that is of the cells of scikit-learn's 8 x 8 digit whose
value is above 0, each drawn as a (side / 8)-pixel square from the paste's top-left corner
(x, y). COCO's bbox is [x0, y0, width, height] in pixels, (x0, y0) the box's top-left corner
(pixel (i, j) covers [i, i + 1) x [j, j + 1)), rounded to 2 decimals; area = width x height of
the unrounded box; category_id = the digit + 1 (ids 1-10 for '0'-'9'); annotation ids 1, 2, ...
in the order written.
"""
import copy
import json
from dataclasses import dataclass
from typing import List

import numpy as np
import pytest

pytest.importorskip('mmdet')
pytest.importorskip('sklearn')

from projects.lsconv_study.lsconv_study.datasets import (  # noqa: E402
    digits_detection, scaled_digits_detection)
from mmlstride.evaluation.shift_consistency import (HALF_PIXEL_SHIFTS,  # noqa: E402
                                                    WHOLE_PIXEL_SHIFTS, shift_boxes,
                                                    shift_image)


@dataclass
class Paste:
    """One digit drawn onto a canvas: where, how large, which of scikit-learn's digits, and
    the canvas region before and after."""
    x: int
    y: int
    side: int
    index: int
    before: np.ndarray
    after: np.ndarray


def record_pastes(monkeypatch) -> List[Paste]:
    """Wraps the generators' paste so that each call is recorded; the digit it draws is read
    by replaying the generator's random state (its first draw is the digit's index)."""
    pastes: List[Paste] = []
    original = digits_detection._paste_digit

    def paste(rng, canvas, images, labels, pool, x, y, side):
        state = copy.deepcopy(rng.bit_generator.state)
        before = canvas[y:y + side, x:x + side].copy()
        result = original(rng, canvas, images, labels, pool, x, y, side)
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        pastes.append(Paste(x, y, side, int(replay.choice(pool)), before,
                            canvas[y:y + side, x:x + side].copy()))
        return result

    for module in (digits_detection, scaled_digits_detection):
        monkeypatch.setattr(module, '_paste_digit', paste)
    return pastes


def ink_box(paste: Paste, digits: np.ndarray) -> List[float]:
    """[x0, y0, x1, y1] of the paste's ink cells, each a (side / 8)-pixel square."""
    rows = [r for r in range(8) if (digits[paste.index][r] > 0).any()]
    cols = [c for c in range(8) if (digits[paste.index][:, c] > 0).any()]
    cell = paste.side / 8
    return [paste.x + cols[0] * cell, paste.y + rows[0] * cell,
            paste.x + (cols[-1] + 1) * cell, paste.y + (rows[-1] + 1) * cell]


GENERATORS = {
    'digits': (digits_detection.generate_digits_detection, 128),
    'scaled_digits': (scaled_digits_detection.generate_scaled_digits_detection, 256),
}


@pytest.fixture(scope='module', params=list(GENERATORS))
def generated(request, tmp_path_factory):
    """A dataset of 240 train and 80 val images, its annotations per split and its pastes."""
    from sklearn.datasets import load_digits
    monkeypatch = pytest.MonkeyPatch()
    try:
        pastes = record_pastes(monkeypatch)
        generate, size = GENERATORS[request.param]
        root = tmp_path_factory.mktemp(request.param) / 'data'
        generate(str(root), num_train=240, num_val=80, size=size, seed=3)
    finally:
        monkeypatch.undo()
    digits = load_digits()
    coco = {split: json.loads((root / 'annotations' / f'{split}.json').read_text())
            for split in ('train', 'val')}
    return root, size, coco, pastes, digits.images, digits.target


def test_every_box_and_class_is_its_digits_ink(generated):
    """Each annotation, in the order written (train, then val), is the box of the ink of the
    digit pasted there, and its class that digit's."""
    _, _, coco, pastes, images, targets = generated
    annotations = coco['train']['annotations'] + coco['val']['annotations']
    assert len(annotations) == len(pastes) > 300
    for split in ('train', 'val'):
        ids = [a['id'] for a in coco[split]['annotations']]
        assert ids == list(range(1, len(ids) + 1))
    for annotation, paste in zip(annotations, pastes):
        x0, y0, x1, y1 = ink_box(paste, images)
        assert annotation['bbox'] == [round(x0, 2), round(y0, 2), round(x1 - x0, 2),
                                      round(y1 - y0, 2)], (annotation, paste.index)
        assert annotation['area'] == pytest.approx((x1 - x0) * (y1 - y0), abs=1e-9)
        assert annotation['category_id'] == int(targets[paste.index]) + 1
        assert annotation['iscrowd'] == 0


def test_every_box_holds_what_the_paste_drew(generated):
    """On the canvas itself: the paste only brightens, its brightest new pixel lies in the
    box, and nothing it changed lies further than one cell outside the box (the bilinear
    scaling's fringe)."""
    _, _, coco, pastes, images, _ = generated
    annotations = coco['train']['annotations'] + coco['val']['annotations']
    for annotation, paste in zip(annotations, pastes):
        assert (paste.after >= paste.before).all()
        gain = (paste.after - paste.before).max(axis=2)  # over the colour channels
        rows, cols = np.nonzero(gain > 0)
        x0, y0, w, h = annotation['bbox']
        cell = paste.side / 8
        # Pixel (row, col) of the region is [x + col, x + col + 1) x [y + row, y + row + 1).
        assert (paste.x + cols >= x0 - cell - 0.01).all() and (paste.x + cols + 1 <= x0 + w + cell
                                                               + 0.01).all()
        assert (paste.y + rows >= y0 - cell - 0.01).all() and (paste.y + rows + 1 <= y0 + h + cell
                                                               + 0.01).all()
        row, col = np.unravel_index(np.argmax(gain), gain.shape)
        assert x0 <= paste.x + col + 0.5 <= x0 + w and y0 <= paste.y + row + 0.5 <= y0 + h


def test_images_are_the_canvases_and_the_val_split_its_own(generated):
    """The PNGs hold the canvases the pastes drew on (each paste's square as it was after the
    paste, where no later digit's square overlaps it), and val's digits are none of
    train's."""
    from PIL import Image
    root, size, coco, pastes, _, _ = generated
    train_indices = {p.index for p in pastes[:len(coco['train']['annotations'])]}
    val_indices = {p.index for p in pastes[len(coco['train']['annotations']):]}
    assert not train_indices & val_indices
    position = 0
    for split in ('train', 'val'):
        by_image = {}
        for annotation in coco[split]['annotations']:
            by_image.setdefault(annotation['image_id'], []).append(pastes[position])
            position += 1
        for image in coco[split]['images'][:60]:
            pixels = np.asarray(Image.open(root / split / image['file_name']), dtype=np.float64)
            assert pixels.shape == (size, size, 3)
            drawn = by_image.get(image['id'], [])
            for k, paste in enumerate(drawn):
                # A later digit's square may cover this one's outside its ink box.
                later = np.zeros((size, size), dtype=bool)
                for other in drawn[k + 1:]:
                    later[other.y:other.y + other.side, other.x:other.x + other.side] = True
                window = np.s_[paste.y:paste.y + paste.side, paste.x:paste.x + paste.side]
                untouched = ~later[window]
                assert untouched.any()
                np.testing.assert_array_equal(pixels[window][untouched],
                                              np.round(paste.after)[untouched])


SHIFTS = WHOLE_PIXEL_SHIFTS + HALF_PIXEL_SHIFTS + ((40.0, 0.0), (0.0, 100.5), (90.0, 120.0))
# Shifts whose images are checked pixel by pixel: whole, half, and uneven fractions.
IMAGE_SHIFTS = WHOLE_PIXEL_SHIFTS[:2] + HALF_PIXEL_SHIFTS[:1] + ((1.25, 2.75),)


def test_shifted_boxes_move_with_the_content(generated):
    """For the shift-consistency evaluation's shifts (and larger ones that push objects
    out): each val box moved by (dx, dy), clipped to the canvas, and kept when at least half
    its area stays inside; and the shifted image's pixels are the original's moved by the
    same amount (whole shifts) or blended between the two neighbours (fractional shifts)."""
    from PIL import Image
    root, size, coco, _, _, _ = generated
    images = coco['val']['images'][:40]
    dropped = 0
    for image in images:
        anns = [a for a in coco['val']['annotations'] if a['image_id'] == image['id']]
        boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                           a['bbox'][1] + a['bbox'][3]] for a in anns]).reshape(-1, 4)
        pixels = np.asarray(Image.open(root / 'val' / image['file_name']), dtype=np.float32)
        for dx, dy in SHIFTS + IMAGE_SHIFTS[-1:]:
            moved, visible = shift_boxes(boxes, dx, dy, size, size)
            for box, kept, got in zip(boxes, visible, moved):
                x0, y0 = min(max(box[0] + dx, 0), size), min(max(box[1] + dy, 0), size)
                x1, y1 = min(max(box[2] + dx, 0), size), min(max(box[3] + dy, 0), size)
                assert np.allclose(got, [x0, y0, x1, y1], rtol=0, atol=1e-9)
                inside = (x1 - x0) * (y1 - y0)
                assert kept == (inside >= 0.5 * (box[2] - box[0]) * (box[3] - box[1]))
                dropped += not kept
            if (dx, dy) in IMAGE_SHIFTS:
                shifted = shift_image(pixels, dx, dy)
                whole_x, whole_y = int(dx), int(dy)
                fx, fy = dx - whole_x, dy - whole_y

                def source(row, col):
                    inside = (row >= 0) & (col >= 0)
                    return np.where(inside[..., None], pixels[np.clip(row, 0, None),
                                                              np.clip(col, 0, None)], 0)

                rows, cols = np.mgrid[0:size, 0:size]
                expected = sum(wy * wx * source(rows - whole_y - ky, cols - whole_x - kx)
                               for ky, wy in ((0, 1 - fy), (1, fy))
                               for kx, wx in ((0, 1 - fx), (1, fx)))
                np.testing.assert_allclose(shifted, expected, rtol=0, atol=1e-3)
    assert dropped > 0  # the large shifts exercise the rule

"""The generated datasets' parts, each against what it promises: the scaled digits' background
is a darkened, sometimes flipped crop of either photograph, anywhere in it, and its clutter 3-8
strokes of 2-4 points inside the canvas; each dataset class and ``ensure_`` function generate
with the stated defaults where the config says, then read what they made."""
import inspect

import numpy as np
import pytest

from conftest import require_module

require_module('mmdet')

from projects.lsconv_study.lsconv_study.datasets import (  # noqa: E402
    digits_detection, scaled_digits_detection)

SIZE = 60


def coordinate_photographs():
    """Two stand-in photographs whose pixels say where they are: channel 0 the row + 1 (+ 100
    in the second), channel 1 the column + 1, channel 2 250."""
    photos = []
    for offset, shape in ((1, (70, 90)), (101, (64, 80))):
        rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
        photos.append(np.stack([rows + offset, cols + 1, np.full(shape, 250)], -1).astype(np.uint8))
    return photos


def test_background_is_a_darkened_crop_of_either_photograph_anywhere(monkeypatch):
    photos = coordinate_photographs()
    monkeypatch.setattr(scaled_digits_detection, '_photographs', lambda: photos)
    seen = {'photo': set(), 'top': set(), 'left': set(), 'flipped': 0, 'factor': []}
    draws = 400
    for seed in range(draws):
        crop = scaled_digits_detection._background(np.random.default_rng(seed), SIZE)
        assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.float32
        factor = float(crop[0, 0, 2]) / 250
        assert 0.15 <= factor <= 0.35
        row = round(float(crop[0, 0, 0]) / factor)
        number, top = (1, row - 101) if row > 100 else (0, row - 1)
        source = photos[number].astype(np.float32)
        flipped = crop[0, 0, 1] > crop[0, -1, 1]
        left = round(float(crop[0, -1 if flipped else 0, 1]) / factor) - 1
        region = source[top:top + SIZE, left:left + SIZE]
        expected = (region[:, ::-1] if flipped else region) * np.float32(factor)
        np.testing.assert_allclose(crop, expected, rtol=1e-5)
        seen['photo'].add(number)
        seen['top'].add((number, top))
        seen['left'].add((number, left))
        seen['flipped'] += int(flipped)
        seen['factor'].append(factor)
    assert seen['photo'] == {0, 1}
    # Every row and column offset of each photograph occurs, the last included.
    assert {t for n, t in seen['top'] if n == 0} == set(range(70 - SIZE + 1))
    assert {t for n, t in seen['top'] if n == 1} == set(range(64 - SIZE + 1))
    assert {x for n, x in seen['left'] if n == 0} == set(range(90 - SIZE + 1))
    assert 0.35 * draws < seen['flipped'] < 0.65 * draws  # half of them, mirrored
    assert min(seen['factor']) < 0.17 and max(seen['factor']) > 0.33


class RecordingDraw:
    """Stands in for PIL's ImageDraw.Draw, recording each line."""
    lines = []

    def __init__(self, image):
        pass

    def line(self, points, fill, width):
        RecordingDraw.lines.append((points, fill, width))


def test_strokes_are_3_to_8_polylines_of_2_to_4_points_inside_the_canvas(monkeypatch):
    from PIL import ImageDraw
    monkeypatch.setattr(ImageDraw, 'Draw', RecordingDraw)
    size = 128
    counts, lengths, widths, colours, steps, starts, later = [], [], [], [], [], [], []
    for seed in range(300):
        RecordingDraw.lines = []
        scaled_digits_detection._strokes(np.random.default_rng(seed), np.zeros((size, size, 3)))
        counts.append(len(RecordingDraw.lines))
        for points, colour, width in RecordingDraw.lines:
            lengths.append(len(points))
            widths.append(width)
            colours.append(colour)
            points = np.array(points)
            starts.append(points[0])
            later.extend(points[1:].ravel())
            steps.extend(np.diff(points, axis=0).ravel())
    assert set(counts) == set(range(3, 9))
    assert set(lengths) == {2, 3, 4} and set(widths) == {1, 2, 3}
    # Colours: RGB, each channel a whole number from 80 to 254.
    assert {len(c) for c in colours} == {3}
    assert min(map(min, colours)) == 80 and max(map(max, colours)) == 254
    # A start anywhere in [0, size); each next point clipped to [0, size - 1], the clip reached.
    starts, later = np.array(starts), np.array(later)
    assert 0 <= starts.min() < 1 and size - 1 < starts.max() < size
    assert later.min() == 0 and later.max() == size - 1
    # Unbiased steps of standard deviation size / 8, less where clipped at the border: for
    # these seeds 14.6 (size / 9 would give about 13).
    steps = np.array(steps)
    assert abs(steps.mean()) < 0.5 and 14.1 < steps.std() < 15.1


DATASETS = {
    'digits': (digits_detection, 'generate_digits_detection', 'ensure_digits_detection',
               'DigitsDetectionDataset', 128),
    'scaled': (scaled_digits_detection, 'generate_scaled_digits_detection',
               'ensure_scaled_digits_detection', 'ScaledDigitsDetectionDataset', 256),
}


@pytest.mark.parametrize('name', list(DATASETS))
def test_ensure_generates_with_the_stated_defaults(monkeypatch, tmp_path, name):
    module, generate, ensure, _, size = DATASETS[name]
    made = []
    monkeypatch.setattr(module, generate, lambda root, **kwargs: made.append((root, kwargs)))
    getattr(module, ensure)(str(tmp_path / 'a'))
    getattr(module, ensure)(str(tmp_path / 'b'), num_val=7)
    assert made == [(str(tmp_path / 'a'), dict(num_train=800, num_val=200, size=size, seed=0)),
                    (str(tmp_path / 'b'), dict(num_train=800, num_val=7, size=size, seed=0))]


@pytest.mark.parametrize('name', list(DATASETS))
def test_dataset_generates_its_data_root_then_reads_it(tmp_path, name):
    module, _, _, dataset_class, _ = DATASETS[name]
    dataset_class = getattr(module, dataset_class)
    signature = inspect.signature(dataset_class)
    assert signature.parameters['data_root'].default == f'data/{module.__name__.split(".")[-1]}'
    root = tmp_path / name
    dataset = dataset_class(
        generation=dict(num_train=3, num_val=1, size=128, seed=2), data_root=str(root),
        ann_file='annotations/train.json', data_prefix=dict(img='train/'), pipeline=[])
    assert len(dataset) == 3 and (root / 'meta.json').exists()
    assert dataset[0]['img_path'].startswith(str(root / 'train'))
    assert dataset.metainfo['classes'] == tuple(str(d) for d in range(10))
    meta = (root / 'meta.json').read_text()
    assert '"seed": 2' in meta and '"size": 128' in meta

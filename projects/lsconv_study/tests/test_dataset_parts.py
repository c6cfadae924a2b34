"""The generated datasets' parts, each against what it promises: the scaled digits' background
is a darkened, sometimes flipped crop of either photograph, anywhere in it, and its clutter 3-8
strokes of 2-4 points inside the canvas; each dataset class and ``ensure_`` function generate
with the stated defaults where the config says, then read what they made."""
import inspect
import json

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
def test_ensure_keeps_data_made_with_the_same_parameters_only(monkeypatch, tmp_path, name):
    module, generate, ensure, _, _ = DATASETS[name]
    root = str(tmp_path)
    getattr(module, ensure)(root, num_train=2, num_val=1, seed=3)
    made = []
    monkeypatch.setattr(module, generate, lambda root, **kwargs: made.append(kwargs))
    getattr(module, ensure)(root, num_train=2, num_val=1, seed=3)
    assert made == []
    with pytest.raises(FileExistsError, match='holds data made with other parameters'):
        getattr(module, ensure)(root, num_train=2, num_val=1, seed=4)


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


@pytest.mark.parametrize('name, expected', [
    ('digits', {'format': 2, 'num_train': 800, 'num_val': 200, 'size': 128, 'seed': 0}),
    ('scaled', {'dataset': 'scaled_digits', 'format': 2, 'num_train': 800, 'num_val': 200,
                'size': 256, 'seed': 0}),
])
def test_generate_defaults_to_800_train_200_val_and_records_them_in_meta(monkeypatch, name,
                                                                         expected):
    """``generate_*`` without arguments writes 800 train and 200 val images of the stated size,
    seed 0, with the canvas of its module, and a meta.json naming exactly those parameters
    (format 2; the scaled dataset also names itself)."""
    module, generate, _, _, _ = DATASETS[name]
    written = []
    monkeypatch.setattr(module, 'write_generated_dataset', lambda *args: written.append(args))
    getattr(module, generate)('somewhere')
    assert written == [('somewhere', module._canvas, expected, 800, 200, expected['size'], 0)]


@pytest.mark.parametrize('name', list(DATASETS))
def test_dataset_defaults_to_data_slash_its_name_and_passes_positional_args(monkeypatch, tmp_path,
                                                                            name):
    """Without ``data_root`` the dataset is made under ``data/<module name>`` of the working
    directory; positional arguments (here ann_file) reach CocoDataset."""
    module, _, _, dataset_class, _ = DATASETS[name]
    monkeypatch.chdir(tmp_path)
    dataset = getattr(module, dataset_class)(
        'annotations/val.json', generation=dict(num_train=1, num_val=2, size=128, seed=3),
        data_prefix=dict(img='val/'), pipeline=[])
    root = tmp_path / 'data' / module.__name__.split('.')[-1]
    assert (root / 'meta.json').exists() and (root / 'val' / '00001.png').exists()
    assert len(dataset) == 2 and dataset[1]['img_path'].endswith('val/00001.png')


def canvas_with_recorded_placements(monkeypatch, module, seed, size, fail_first=False):
    """Runs ``module._canvas`` (the scaled one on a black background without strokes) and
    returns its pixels, its boxes and each placement attempt's (side, boxes to avoid, corner);
    with ``fail_first`` each canvas's first attempt finds no room."""
    attempts = []
    real_place = digits_detection._place

    def place(rng, canvas_size, boxes, side):
        assert canvas_size == size
        corner = real_place(rng, canvas_size, boxes, side)
        if fail_first and not attempts:
            corner = None
        attempts.append((side, [list(b) for b in boxes], corner))
        return corner

    monkeypatch.setattr(module, '_place', place)
    if module is scaled_digits_detection:
        monkeypatch.setattr(module, '_background',
                            lambda rng, n: np.zeros((n, n, 3), np.float32))
        monkeypatch.setattr(module, '_strokes', lambda rng, canvas: canvas)
    images, labels, pool = digits_detection._digit_split(0)
    pixels, boxes = module._canvas(np.random.default_rng(seed), images, labels, pool, size)
    return pixels, boxes, attempts


@pytest.mark.parametrize('name, digits, sides', [('digits', (1, 4), (16, 48)),
                                                 ('scaled', (2, 8), (12, 96))])
def test_canvas_tries_the_stated_number_of_digits_avoiding_those_placed(monkeypatch, name, digits,
                                                                        sides):
    """Each canvas tries 1-4 digits of sides 16-48 px (scaled: 2-8 of 12-96 px), every count
    occurring, the sides reaching the least and nearly the most (96 is rare: log-uniform,
    rounded); each try avoids exactly the [x0, y0, x1, y1] boxes of the
    digits placed before it, and every placed digit is in the returned boxes."""
    module, _, _, _, size = DATASETS[name]
    counts, all_sides = set(), []
    for seed in range(60):
        pixels, boxes, attempts = canvas_with_recorded_placements(monkeypatch, module, seed, size)
        assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
        counts.add(len(attempts))
        placed = 0
        for side, avoided, corner in attempts:
            all_sides.append(side)
            assert avoided == [box[:4] for box in boxes[:placed]]
            placed += corner is not None
        assert placed == len(boxes)
    assert counts == set(range(digits[0], digits[1] + 1))
    assert min(all_sides) == sides[0] and 0.95 * sides[1] <= max(all_sides) <= sides[1]


@pytest.mark.parametrize('name, most', [('digits', 4), ('scaled', 8)])
def test_canvas_skips_a_digit_that_finds_no_room_and_places_the_rest(monkeypatch, name, most):
    """A digit without room is left out; the canvas goes on to try the others."""
    module, _, _, _, size = DATASETS[name]
    tried = set()
    for seed in range(30):
        _, boxes, attempts = canvas_with_recorded_placements(monkeypatch, module, seed, size,
                                                             fail_first=True)
        assert attempts[0][2] is None
        assert len(boxes) == sum(corner is not None for _, _, corner in attempts)
        tried.add(len(attempts))
    assert max(tried) == most


def test_digits_canvas_background_is_grey_noise_from_0_to_40(monkeypatch):
    """Without digits the digits dataset's canvas is grey (equal channels) noise of 0-40."""
    monkeypatch.setattr(digits_detection, '_place', lambda rng, size, boxes, side: None)
    images, labels, pool = digits_detection._digit_split(0)
    pixels, boxes = digits_detection._canvas(np.random.default_rng(0), images, labels, pool, 128)
    assert boxes == [] and pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    assert (pixels == pixels[..., :1]).all()
    assert pixels.min() == 0 and pixels.max() == 40
    assert set(np.unique(pixels)) == set(range(41))


def test_digit_split_is_scikit_learns_digits_as_ink_0_to_1_and_an_80_percent_train_pool():
    """The 1797 8x8 digits as float32 ink fractions (scikit-learn's 0-16 over 16, full ink
    1.0), their labels, and a seeded 80% (1437) train pool of distinct indices."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels, train = digits_detection._digit_split(5)
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    np.testing.assert_array_equal(images * 16, digits.images)
    assert images.min() == 0 and images.max() == 1
    np.testing.assert_array_equal(labels, digits.target)
    assert len(train) == len(set(train.tolist())) == 1437 and set(train) <= set(range(1797))
    np.testing.assert_array_equal(train, digits_detection._digit_split(5)[2])
    assert set(train) != set(digits_detection._digit_split(6)[2])


def test_paste_digit_draws_the_ink_in_its_colour_where_brighter_and_boxes_the_strokes():
    """A full-ink pixel shows the digit's colour (120-255 a channel), no pixel gets brighter
    than that colour, a brighter canvas pixel stays, nothing outside the square changes, and
    the box is tight around the strokes scaled by side / 8."""
    digit = np.zeros((8, 8), np.float32)
    digit[2:6, 1:7] = 1.0  # ink in rows 2-5, columns 1-6
    images, labels = digit[None], np.array([7])
    canvas = np.zeros((40, 40, 3))
    canvas[3, 2] = 255.0  # brighter than any ink
    box = digits_detection._paste_digit(np.random.default_rng(0), canvas, images, labels,
                                        np.array([0]), 2, 3, 16)
    assert box == [2 + 1 * 2, 3 + 2 * 2, 2 + 7 * 2, 3 + 6 * 2, 7]
    colour = canvas[3 + 8, 2 + 8]  # the middle of the ink
    assert ((120 <= colour) & (colour <= 255)).all() and len(set(colour.tolist())) == 3
    square = canvas[3:19, 2:18].copy()
    square[0, 0] = 0
    assert (square <= colour + 1e-9).all() and (square[..., 0] > 0).sum() > 16 * 6
    assert (canvas[3, 2] == 255).all()
    outside = canvas.copy()
    outside[3:19, 2:18] = 0
    assert (outside == 0).all()


class ScriptedRng:
    """Stands in for a Generator in _place: its integers(0, n, size=2) give the scripted
    (x, y) corners in turn, each checked to be drawn from 0 to n - 1."""

    def __init__(self, corners, high):
        self.corners, self.high, self.draws = list(corners), high, 0

    def integers(self, low, high=None, size=None):
        if high is None:
            low, high = 0, low
        assert (low, high, size) == (0, self.high, 2)
        self.draws += 1
        return np.array(self.corners.pop(0) if self.corners else (25, 35))


BOX = [20, 30, 40, 50]  # x0, y0, x1, y1; the digits have side 10 on a 100 px canvas
OVERLAPPING = [(11, 35), (39, 35), (25, 21), (25, 49), (25, 35), (15, 25), (35, 45)]


@pytest.mark.parametrize('touching', [(10, 35), (40, 35), (25, 20), (25, 50), (0, 0),
                                      (90, 90)])
def test_place_rejects_any_overlap_and_takes_the_first_free_corner(touching):
    """Corners whose 10 px square overlaps a placed box by even one pixel are passed over;
    the first free one, even touching the box's left, right, top or bottom edge, is taken."""
    rng = ScriptedRng(OVERLAPPING + [touching, (0, 0)], 100 - 10 + 1)
    assert digits_detection._place(rng, 100, [[0, 90, 5, 95], BOX], 10) == touching
    assert rng.draws == len(OVERLAPPING) + 1


def test_place_gives_up_after_50_tries():
    """With no room, _place draws exactly 50 corners and returns None; a free 50th is taken."""
    rng = ScriptedRng([], 91)
    assert digits_detection._place(rng, 100, [BOX], 10) is None and rng.draws == 50
    rng = ScriptedRng([(25, 35)] * 49 + [(60, 60)], 91)
    assert digits_detection._place(rng, 100, [BOX], 10) == (60, 60) and rng.draws == 50


def test_place_draws_every_corner_that_keeps_the_digit_inside():
    """With nothing placed, corners range over all of 0..size - side, both ends included."""
    rng = np.random.default_rng(0)
    corners = {digits_detection._place(rng, 20, [], 16) for _ in range(200)}
    assert corners == {(x, y) for x in range(5) for y in range(5)}


class ColourRng:
    """Stands in for a Generator in _paste_digit: picks the pool's first digit and gives the
    colour (120, 187.5, 255), checking it is drawn as three channels from 120 to 255."""

    def choice(self, pool):
        return pool[0]

    def uniform(self, low, high, size):
        assert (low, high, size) == (120, 255, 3)
        return np.array([120.0, 187.5, 255.0])


def bilinear(grey: np.ndarray, side: int) -> np.ndarray:
    """An 8 x 8 image scaled to side x side by linear interpolation between the centres of the
    source pixels (clamped at the border)."""
    source = (np.arange(side) + 0.5) * 8 / side - 0.5
    low = np.clip(np.floor(source).astype(int), 0, 7)
    high = np.clip(low + 1, 0, 7)
    weight = np.clip(source - low, 0, 1)
    rows = grey[low] * (1 - weight)[:, None] + grey[high] * weight[:, None]
    return rows[:, low] * (1 - weight) + rows[:, high] * weight


def test_paste_digit_draws_the_digit_as_an_8_bit_grey_image_scaled_bilinearly():
    """The digit is drawn as an 8-bit grey image (ink v / 16 as floor(v * 255 / 16) of 255)
    scaled bilinearly (no ringing) and times the colour: full ink shows the colour exactly."""
    digit = np.zeros((8, 8), np.float32)
    digit[1:7, 1:4] = 1.0  # full ink
    digit[1:7, 4:7] = 1 / 16  # faintest ink: 15 of 255
    side = 32
    canvas = np.zeros((side, side, 3))
    digits_detection._paste_digit(ColourRng(), canvas, digit[None], np.array([4]), np.array([0]),
                                  0, 0, side)
    grey = np.floor(digit * 255)
    np.testing.assert_allclose(canvas[..., 2], bilinear(grey, side), atol=1.01)
    np.testing.assert_allclose(canvas[..., 0], canvas[..., 2] * 120 / 255, rtol=1e-6)
    np.testing.assert_allclose(canvas[8:24, 6:10, 2], 255, rtol=1e-6)  # full ink's interior
    np.testing.assert_allclose(canvas[8:24, 6:10], np.broadcast_to([120, 187.5, 255], (16, 4, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(canvas[8:24, 18:26, 2], 15, rtol=1e-6)  # faint ink's interior


def test_write_generated_dataset_writes_coco_pngs_and_meta_through_a_hidden_sibling(tmp_path):
    """Each split's canvases, drawn from its own digit pool (train 1437, val the other 360),
    become ``<split>/00000.png``... and COCO json: images with ids from 0 and the size,
    annotations with ids from 1, category id = label + 1 (ids 1-10 for '0'-'9'), iscrowd 0,
    the unrounded area and bbox [x0, y0, w, h] rounded to 2 decimals; meta.json is the meta.
    It is staged in a hidden '.digits-' directory beside the root, which appears whole."""
    from PIL import Image
    root, calls = tmp_path / 'made' / 'data', []

    def canvas(rng, images, labels, pool, size):
        if not calls:
            assert not root.exists()
            staged = [p.name for p in root.parent.iterdir()]
            assert len(staged) == 1 and staged[0].startswith('.digits-')
        calls.append(pool)
        pixels = np.zeros((size, size, 3), np.uint8)
        pixels[..., 0], pixels[1, 2] = len(calls), (7, 8, 9)
        return pixels, [[1.125, 2.375, 10.5, 20.0, 9], [0.0, 3.0, 4.0, 5.5, 0]][:len(calls) % 3]

    digits_detection.write_generated_dataset(str(root), canvas, {'any': ['meta']}, 3, 2, 16, 4)
    assert [p.name for p in root.parent.iterdir()] == ['data']
    assert json.loads((root / 'meta.json').read_text()) == {'any': ['meta']}
    train, val = calls[0], calls[3]
    assert all(p is train for p in calls[:3]) and all(p is val for p in calls[3:])
    assert len(train) == 1437 and len(val) == 360 and not set(train) & set(val)
    first = {'image_id': 0, 'category_id': 10, 'iscrowd': 0, 'area': 9.375 * 17.625,
             'bbox': [1.12, 2.38, 9.38, 17.62]}
    second = {'image_id': 1, 'category_id': 10, 'iscrowd': 0, 'area': 9.375 * 17.625,
              'bbox': [1.12, 2.38, 9.38, 17.62]}
    # Images 0 and 1 of each split: one box, then two; train's image 2 none.
    expected = [dict(first, id=1), dict(second, id=2),
                {'id': 3, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'area': 10.0,
                 'bbox': [0.0, 3.0, 4.0, 2.5]}]
    for split, count, offset in (('train', 3, 1), ('val', 2, 4)):
        coco = json.loads((root / 'annotations' / f'{split}.json').read_text())
        assert coco['images'] == [{'id': i, 'file_name': f'0000{i}.png', 'width': 16,
                                   'height': 16} for i in range(count)]
        assert coco['categories'] == [{'id': k + 1, 'name': str(k)} for k in range(10)]
        assert coco['annotations'] == expected
        for i in range(count):
            pixels = np.asarray(Image.open(root / split / f'0000{i}.png'))
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
            assert pixels[0, 0].tolist() == [offset + i, 0, 0]
            assert pixels[1, 2].tolist() == [7, 8, 9]


def test_write_generated_dataset_leaves_a_root_made_meanwhile_and_cleans_up(tmp_path):
    """If the root appeared while it was writing (another rank finished first), that data is
    kept and the staged copy removed."""
    root = tmp_path / 'data'

    def canvas(rng, images, labels, pool, size):
        if not root.exists():
            root.mkdir()
            (root / 'theirs.txt').write_text('first')
        return np.zeros((size, size, 3), np.uint8), []

    digits_detection.write_generated_dataset(str(root), canvas, {}, 1, 1, 8, 0)
    assert [p.name for p in tmp_path.iterdir()] == ['data']
    assert [p.name for p in root.iterdir()] == ['theirs.txt']


@pytest.mark.parametrize('name, size, expected', [
    ('digits', 64, {
        'train': [(0, 7, [27.5, 25.0, 23.75, 38.0]), (1, 6, [6.62, 25.0, 27.75, 37.0])],
        'val': [(0, 6, [41.75, 38.0, 19.25, 22.0]), (0, 1, [7.62, 23.0, 21.75, 29.0]),
                (0, 9, [33.5, 7.0, 21.0, 28.0]), (1, 1, [9.0, 14.0, 36.0, 48.0])]}),
    ('scaled', 128, {
        'train': [(0, 5, [73.5, 74.0, 15.0, 20.0]), (0, 8, [17.75, 42.0, 50.25, 67.0]),
                  (1, 10, [5.25, 1.0, 25.5, 34.0]), (1, 3, [51.75, 70.0, 22.5, 30.0])],
        'val': [(0, 4, [12.62, 60.0, 9.75, 13.0]), (0, 5, [73.38, 99.0, 20.25, 27.0]),
                (0, 8, [70.25, 55.0, 10.62, 17.0]), (1, 5, [23.75, 76.0, 22.5, 30.0]),
                (1, 9, [86.0, 57.0, 24.0, 32.0]), (1, 10, [72.12, 103.0, 12.75, 17.0]),
                (1, 7, [21.0, 18.0, 42.0, 56.0]), (1, 3, [77.12, 9.0, 12.75, 17.0]),
                (1, 10, [96.88, 94.0, 13.12, 15.0])]}),
])
def test_format_2_data_is_pinned(tmp_path, name, size, expected):
    """The boxes of format 2 stay what they were when it was made (seed 0, 2 + 2 images): data
    already generated is reused while meta.json's format matches, so anything that changes the
    data (the splits' random streams, the order of draws) must bump FORMAT_VERSION."""
    module, generate, _, _, _ = DATASETS[name]
    assert module.FORMAT_VERSION == 2
    getattr(module, generate)(str(tmp_path / 'd'), num_train=2, num_val=2, size=size, seed=0)
    for split in ('train', 'val'):
        coco = json.loads((tmp_path / 'd' / 'annotations' / f'{split}.json').read_text())
        assert [(a['image_id'], a['category_id'], a['bbox'])
                for a in coco['annotations']] == expected[split]

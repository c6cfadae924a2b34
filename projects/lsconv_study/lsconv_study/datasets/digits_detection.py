"""A small detection dataset made, deterministically, from scikit-learn's handwritten digits.

Each image is a dark noisy canvas with 1-4 digits (classes '0'-'9') scaled to
16-48 pixels and coloured, boxes tight around their strokes; the annotations are
COCO json, so mmdet's CocoDataset and CocoMetric read them. The data ships
inside scikit-learn: nothing is downloaded. Train and val canvases use disjoint
digit samples (a fixed 80/20 split of the 1797).
"""
import json
import os
import shutil
import tempfile
from typing import Callable, List, Tuple

import numpy as np
from mmdet.datasets import CocoDataset

CLASSES = tuple(str(d) for d in range(10))
# 2: annotation ids start at 1 (pycocotools never counts a ground truth of id 0 as found).
FORMAT_VERSION = 2


def _digit_split(seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    train = order[:int(0.8 * len(order))]
    return digits.images.astype(np.float32) / 16.0, digits.target, train


def _place(rng: np.random.Generator, size: int, boxes: List[List[float]], side: int):
    """A free top-left corner for a side x side digit, or None after 50 tries."""
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(x + side <= b[0] or b[2] <= x or y + side <= b[1] or b[3] <= y for b in boxes):
            return x, y
    return None


def _paste_digit(rng: np.random.Generator, canvas: np.ndarray, images: np.ndarray,
                 labels: np.ndarray, pool: np.ndarray, x: int, y: int, side: int) -> List[float]:
    """Draws a random digit of ``pool``, scaled to side x side and coloured, at (x, y) of
    ``canvas`` (brighter pixels win); returns its [x0, y0, x1, y1, label], tight around its
    strokes."""
    from PIL import Image
    index = int(rng.choice(pool))
    digit = images[index]
    scaled = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (side, side), Image.BILINEAR), dtype=np.float32) / 255
    colour = rng.uniform(120, 255, size=3)
    region = canvas[y:y + side, x:x + side]
    np.maximum(region, scaled[..., None] * colour, out=region)
    rows, cols = np.nonzero(digit > 0)
    scale = side / 8
    return [x + cols.min() * scale, y + rows.min() * scale,
            x + (cols.max() + 1) * scale, y + (rows.max() + 1) * scale, int(labels[index])]


def _canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
            pool: np.ndarray, size: int):
    """One image (size, size, 3) uint8 and its [x0, y0, x1, y1, label] list."""
    canvas = rng.uniform(0, 40, size=(size, size, 1)).repeat(3, axis=2)
    placed: List[List[float]] = []
    for _ in range(int(rng.integers(1, 5))):
        side = int(rng.integers(16, 49))
        corner = _place(rng, size, [p[:4] for p in placed], side)
        if corner is None:
            continue
        placed.append(_paste_digit(rng, canvas, images, labels, pool, *corner, side))
    return canvas.round().astype(np.uint8), placed


def write_generated_dataset(root: str, canvas: Callable, meta: dict, num_train: int,
                            num_val: int, size: int, seed: int) -> None:
    """Writes ``root/{train,val}/*.png``, ``root/annotations/{train,val}.json`` (COCO) and
    ``root/meta.json``: ``canvas(rng, images, labels, pool, size)`` draws each image and its
    [x0, y0, x1, y1, label] boxes from the train or val digit samples.

    The same arguments give the same bytes. Written to a temporary directory and moved into
    place, so concurrent callers (distributed ranks) are safe.
    """
    from PIL import Image
    images, labels, train_pool = _digit_split(seed)
    val_pool = np.setdiff1d(np.arange(len(images)), train_pool)
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.digits-', dir=parent)
    os.makedirs(os.path.join(staging, 'annotations'))
    for split, count, pool, split_seed in (('train', num_train, train_pool, seed + 1),
                                           ('val', num_val, val_pool, seed + 2)):
        rng = np.random.default_rng(split_seed)
        os.makedirs(os.path.join(staging, split))
        coco = {'images': [], 'annotations': [],
                'categories': [{'id': k + 1, 'name': name} for k, name in enumerate(CLASSES)]}
        for image_id in range(count):
            pixels, boxes = canvas(rng, images, labels, pool, size)
            file_name = f'{image_id:05d}.png'
            Image.fromarray(pixels).save(os.path.join(staging, split, file_name))
            coco['images'].append({'id': image_id, 'file_name': file_name, 'width': size,
                                   'height': size})
            for x0, y0, x1, y1, label in boxes:
                coco['annotations'].append({
                    'id': len(coco['annotations']) + 1, 'image_id': image_id,
                    'category_id': label + 1, 'iscrowd': 0, 'area': (x1 - x0) * (y1 - y0),
                    'bbox': [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]})
        with open(os.path.join(staging, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(coco, f)
    with open(os.path.join(staging, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    try:
        os.rename(staging, root)
    except OSError:  # another process finished first
        shutil.rmtree(staging)


def ensure_generated(root: str, meta: dict, generate: Callable[[], None]) -> None:
    """Calls ``generate()`` unless ``root`` holds data whose meta.json equals ``meta``."""
    meta_path = os.path.join(root, 'meta.json')
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return
        raise FileExistsError(f'data_root={root!r} holds data made with other parameters '
                              f'than {meta}; expected a fresh directory')
    generate()


def generate_digits_detection(root: str, num_train: int = 800, num_val: int = 200,
                              size: int = 128, seed: int = 0) -> None:
    """Writes the digits dataset to ``root`` (see write_generated_dataset)."""
    write_generated_dataset(root, _canvas, _meta(num_train, num_val, size, seed), num_train,
                            num_val, size, seed)


def _meta(num_train: int, num_val: int, size: int, seed: int) -> dict:
    return {'format': FORMAT_VERSION, 'num_train': num_train, 'num_val': num_val, 'size': size,
            'seed': seed}


def ensure_digits_detection(root: str, **generation) -> None:
    """Generates the dataset at ``root`` unless it is there with the same parameters."""
    defaults = dict(num_train=800, num_val=200, size=128, seed=0)
    defaults.update(generation)
    ensure_generated(root, _meta(**defaults), lambda: generate_digits_detection(root, **defaults))


class DigitsDetectionDataset(CocoDataset):
    """mmdet's CocoDataset over the generated digits data; generates it on first use.

    Args:
        generation: arguments of :func:`generate_digits_detection` other than
            ``root`` (num_train, num_val, size, seed); default 800/200/128/0.
        Everything else as CocoDataset (``data_root`` is where it is made).
    """

    METAINFO = {'classes': CLASSES,
                'palette': [(220, 20, 60), (119, 11, 32), (0, 0, 142), (0, 0, 230),
                            (106, 0, 228), (0, 60, 100), (0, 80, 100), (0, 0, 70),
                            (0, 0, 192), (250, 170, 30)]}

    def __init__(self, *args, generation: dict = None, data_root: str = 'data/digits_detection',
                 **kwargs) -> None:
        ensure_digits_detection(data_root, **(generation or {}))
        super().__init__(*args, data_root=data_root, **kwargs)

"""A harder detection dataset where scale matters, made, deterministically, from data that
ships inside scikit-learn: nothing is downloaded.

Each 256 px image holds 2-8 handwritten digits (classes '0'-'9', scikit-learn's 8x8
digits) whose sides are drawn log-uniformly from 12 to 96 px, an 8x range, on a darkened
crop of one of scikit-learn's two sample photographs, with 3-8 unannotated coloured strokes
as clutter. Boxes are tight around the digits' strokes; the annotations are COCO json, so
mmdet's CocoDataset and CocoMetric read them. Train and val canvases use disjoint digit
samples, the same 80/20 split as the digits dataset.
"""
from typing import List

import numpy as np
from mmdet.datasets import CocoDataset

from .digits_detection import (FORMAT_VERSION, DigitsDetectionDataset, _paste_digit, _place,
                               ensure_generated, write_generated_dataset)

SIDES = (12, 96)
DIGITS_PER_IMAGE = (2, 8)
STROKES_PER_IMAGE = (3, 8)


def _photographs() -> List[np.ndarray]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg), (427, 640, 3) uint8 each."""
    from sklearn.datasets import load_sample_images
    return load_sample_images().images


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float crop of a sample photograph, randomly flipped and darkened to
    at most 90, so digits (120-255) stand out but edges and textures remain."""
    photos = _photographs()
    photo = photos[int(rng.integers(0, len(photos)))]
    y = int(rng.integers(0, photo.shape[0] - size + 1))
    x = int(rng.integers(0, photo.shape[1] - size + 1))
    crop = photo[y:y + size, x:x + size].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop * rng.uniform(0.15, 0.35)


def _strokes(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """The canvas with 3-8 random polylines (2-4 points, 1-3 px wide, digit-like colours)."""
    from PIL import Image, ImageDraw
    size = canvas.shape[0]
    image = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(STROKES_PER_IMAGE[0], STROKES_PER_IMAGE[1] + 1))):
        start = rng.uniform(0, size, size=2)
        points = [tuple(start)]
        for _ in range(int(rng.integers(1, 4))):
            points.append(tuple(np.clip(points[-1] + rng.normal(0, size / 8, size=2), 0,
                                        size - 1)))
        colour = tuple(int(c) for c in rng.uniform(80, 255, size=3))
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(image, dtype=np.float32)


def _canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
            pool: np.ndarray, size: int):
    """One image (size, size, 3) uint8 and its [x0, y0, x1, y1, label] list."""
    canvas = _strokes(rng, _background(rng, size))
    placed: List[List[float]] = []
    low, high = np.log(SIDES[0]), np.log(SIDES[1])
    for _ in range(int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))):
        side = int(round(float(np.exp(rng.uniform(low, high)))))
        corner = _place(rng, size, [p[:4] for p in placed], side)
        if corner is None:
            continue
        placed.append(_paste_digit(rng, canvas, images, labels, pool, *corner, side))
    return canvas.round().astype(np.uint8), placed


def _meta(num_train: int, num_val: int, size: int, seed: int) -> dict:
    return {'dataset': 'scaled_digits', 'format': FORMAT_VERSION, 'num_train': num_train,
            'num_val': num_val, 'size': size, 'seed': seed}


def generate_scaled_digits_detection(root: str, num_train: int = 800, num_val: int = 200,
                                     size: int = 256, seed: int = 0) -> None:
    """Writes the scaled digits dataset to ``root`` (see write_generated_dataset)."""
    write_generated_dataset(root, _canvas, _meta(num_train, num_val, size, seed), num_train,
                            num_val, size, seed)


def ensure_scaled_digits_detection(root: str, **generation) -> None:
    """Generates the dataset at ``root`` unless it is there with the same parameters."""
    defaults = dict(num_train=800, num_val=200, size=256, seed=0)
    defaults.update(generation)
    ensure_generated(root, _meta(**defaults),
                     lambda: generate_scaled_digits_detection(root, **defaults))


class ScaledDigitsDetectionDataset(CocoDataset):
    """mmdet's CocoDataset over the generated scaled digits data; generates it on first use.

    Args:
        generation: arguments of :func:`generate_scaled_digits_detection` other than
            ``root`` (num_train, num_val, size, seed); default 800/200/256/0.
        Everything else as CocoDataset (``data_root`` is where it is made).
    """

    METAINFO = DigitsDetectionDataset.METAINFO

    def __init__(self, *args, generation: dict = None,
                 data_root: str = 'data/scaled_digits_detection', **kwargs) -> None:
        ensure_scaled_digits_detection(data_root, **(generation or {}))
        super().__init__(*args, data_root=data_root, **kwargs)

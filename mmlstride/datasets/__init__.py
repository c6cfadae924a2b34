"""Datasets (importing registers them in mmdet's DATASETS)."""
from .digits_detection import (CLASSES, DigitsDetectionDataset, ensure_digits_detection,
                               generate_digits_detection)

__all__ = ['CLASSES', 'DigitsDetectionDataset', 'ensure_digits_detection',
           'generate_digits_detection']

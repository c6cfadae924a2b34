"""The generated detection datasets of the study (registered in mmdet's DATASETS when the
project is imported)."""
from .digits_detection import (CLASSES, DigitsDetectionDataset, ensure_digits_detection,
                               generate_digits_detection)
from .scaled_digits_detection import (ScaledDigitsDetectionDataset,
                                      ensure_scaled_digits_detection,
                                      generate_scaled_digits_detection)

__all__ = ['CLASSES', 'DigitsDetectionDataset', 'ensure_digits_detection',
           'generate_digits_detection', 'ScaledDigitsDetectionDataset',
           'ensure_scaled_digits_detection', 'generate_scaled_digits_detection']

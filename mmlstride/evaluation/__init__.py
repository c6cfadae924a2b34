"""Evaluation beyond mmdet's metrics: shift consistency."""
from .shift_consistency import (HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS, coco_map, matched,
                                shift_boxes, shift_consistency, shift_image)

__all__ = ['HALF_PIXEL_SHIFTS', 'WHOLE_PIXEL_SHIFTS', 'coco_map', 'matched', 'shift_boxes',
           'shift_consistency', 'shift_image']

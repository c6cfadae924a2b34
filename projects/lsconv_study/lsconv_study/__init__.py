"""The LSConv detection study as an mmdet project: generated digits datasets, the suites of
paired settings, their runner, statistics and report. Importing it (configs do, through
``custom_imports``) registers the datasets in mmdet's ``DATASETS``."""
from mmdet.registry import DATASETS

from .datasets import DigitsDetectionDataset, ScaledDigitsDetectionDataset

DATASETS.register_module(module=DigitsDetectionDataset)
DATASETS.register_module(module=ScaledDigitsDetectionDataset)

__all__ = ['DigitsDetectionDataset', 'ScaledDigitsDetectionDataset']

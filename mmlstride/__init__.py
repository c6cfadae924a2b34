"""mmlstride: learnable-stride convolution (LSConv) for PyTorch, MMCV and MMDetection.

Importing the package registers the ``LSConv`` layer in mmengine's root
``MODELS`` registry (so ``conv_cfg=dict(type='LSConv')`` works in mmdet configs)
and ``StrideLoggerHook`` in ``HOOKS``; where mmdet is installed, also the
``LSResNet`` backbone and the ``DigitsDetectionDataset`` in mmdet's registries.
"""
import importlib.util

from .torch_compat import check_torch_floor

check_torch_floor()  # before anything that needs the supported torch

from . import engine  # noqa: E402
from .ops import LSConv2d, ls_conv2d, ls_conv2d_reference  # noqa: E402
from .version import __version__  # noqa: E402

if importlib.util.find_spec('mmdet') is not None:
    from . import datasets, models  # noqa: F401  (registrations)

__all__ = ['LSConv2d', 'ls_conv2d', 'ls_conv2d_reference', '__version__']

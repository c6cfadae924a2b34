"""mmlstride: learnable-stride convolution (LSConv) for PyTorch, MMCV and MMDetection.

Importing the package registers the ``LSConv`` layer in mmengine's root
``MODELS`` registry, so ``conv_cfg=dict(type='LSConv')`` works in mmdet configs.
"""
from .ops import LSConv2d, ls_conv2d, ls_conv2d_reference
from .version import __version__

__all__ = ['LSConv2d', 'ls_conv2d', 'ls_conv2d_reference', '__version__']

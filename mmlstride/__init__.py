"""mmlstride: learnable-stride convolution (LSConv) for PyTorch, MMCV and MMDetection.

The op and the layers (:mod:`mmlstride.ops`) need torch alone. Where mmengine is installed,
importing the package also registers LSConv and the rest in OpenMMLab's registries
(:mod:`mmlstride.openmmlab`), so that ``conv_cfg=dict(type='LSConv')`` works in mmdet configs.
"""
import importlib

from .torch_compat import check_torch_floor

check_torch_floor()  # before anything that needs the supported torch

from .ops import LSConv2d, ls_conv2d, ls_conv2d_reference  # noqa: E402
from .version import __version__  # noqa: E402



def importable(name: str) -> bool:
    """Whether the package ``name`` imports (it is then imported)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


if importable('mmengine'):
    from . import openmmlab  # noqa: F401  (registrations)

__all__ = ['LSConv2d', 'ls_conv2d', 'ls_conv2d_reference', '__version__']

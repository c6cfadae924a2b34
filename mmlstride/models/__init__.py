"""mmdet backbones with learned strides (in mmdet's MODELS through
:mod:`mmlstride.openmmlab`)."""
from .ls_resnet import BlurResNet, LSResNet

__all__ = ['BlurResNet', 'LSResNet']

"""mmdet models with learned strides (importing registers them in mmdet's MODELS)."""
from .ls_resnet import BlurResNet, LSResNet

__all__ = ['BlurResNet', 'LSResNet']

"""LSConv operator and layer; the fixed anti-aliasing layer it is compared with."""
from .blur_conv2d import BlurConv2d
from .ls_conv2d_function import ls_conv2d
from .ls_conv2d_layer import LSConv2d, switch_to_deploy
from .ls_conv2d_reference import ls_conv2d_reference

__all__ = ['BlurConv2d', 'LSConv2d', 'ls_conv2d', 'ls_conv2d_reference', 'switch_to_deploy']

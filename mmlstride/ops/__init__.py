"""LSConv operator and layer."""
from .ls_conv2d_function import ls_conv2d
from .ls_conv2d_layer import LSConv2d
from .ls_conv2d_reference import ls_conv2d_reference

__all__ = ['LSConv2d', 'ls_conv2d', 'ls_conv2d_reference']

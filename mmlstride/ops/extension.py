"""Loading of the compiled extension (mmlstride._ext) that registers torch.ops.mmlstride."""
import warnings

import torch

try:
    from mmlstride import _ext  # noqa: F401  (registers the ops on import)
    EXTENSION_ERROR = None
except ImportError as error:  # not built: the pure-PyTorch implementation is used
    EXTENSION_ERROR = error

_warned = False


@torch.compiler.assume_constant_result
def has_kernel(device: torch.device) -> bool:
    """Whether the compiled ops run on ``device``; warns once when they do not."""
    global _warned
    key = 'Meta' if device.type == 'meta' else device.type.upper()  # CPU, CUDA, Meta
    if EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
            'mmlstride::ls_conv2d', key):
        return True
    if not _warned:
        _warned = True
        reason = (f'mmlstride._ext is not built ({EXTENSION_ERROR})' if EXTENSION_ERROR
                  else f'mmlstride._ext has no {device.type} kernels')
        warnings.warn(f'{reason}; LSConv falls back to its pure-PyTorch implementation, '
                      'which is slower. Build it with `pip install --no-build-isolation -e .`.')
    return False

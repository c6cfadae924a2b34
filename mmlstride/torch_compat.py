"""What differs between the torch versions mmlstride supports, torch 2.1 to the newest: the
version floor, checks for features that need a newer torch, and the torch.library registrations
with their fallbacks on a torch that lacks them."""
import re
from typing import Callable, Dict, Optional, Tuple

import torch

# The oldest torch mmlstride builds and is tested against (also in setup.py).
TORCH_FLOOR = (2, 1)

# Features newer than the floor: the first torch that has them as mmlstride uses them.
FEATURES: Dict[str, Tuple[int, int]] = {
    # torch.export.export with dynamic shapes of custom ops (torch.export.Dim, fake kernels).
    'torch.export with dynamic shapes': (2, 4),
    # torch.onnx.export(..., dynamo=True).
    'the dynamo ONNX exporter': (2, 6),
    # torch.library.opcheck.
    'torch.library.opcheck': (2, 4),
    # torch.compile(fullgraph=True) through the op's fake and autograd registrations.
    'torch.compile with fullgraph=True': (2, 4),
}


def torch_version(version: Optional[str] = None) -> Tuple[int, int]:
    """(major, minor) of a torch version string such as '2.1.2+cu121', by default the running
    torch's."""
    version = torch.__version__ if version is None else version
    match = re.match(r'(\d+)\.(\d+)', version)
    if match is None:
        raise ValueError(f'torch.__version__={version!r} expected a version such as 2.1.2')
    return int(match.group(1)), int(match.group(2))


def check_torch_floor(version: Optional[str] = None) -> None:
    """An ImportError unless ``version`` (by default the running torch's) is at least
    TORCH_FLOOR."""
    version = torch.__version__ if version is None else version
    if torch_version(version) < TORCH_FLOOR:
        floor = '.'.join(map(str, TORCH_FLOOR))
        raise ImportError(f'mmlstride needs torch >= {floor}; found torch {version}. '
                          f'Install torch {floor} or newer, then rebuild mmlstride.')


def has_feature(feature: str) -> bool:
    """Whether the running torch has ``feature`` (a key of FEATURES)."""
    return torch_version() >= FEATURES[feature]


def require_feature(feature: str) -> None:
    """A RuntimeError naming ``feature``, the torch it needs and the torch found, unless the
    running torch has it."""
    if not has_feature(feature):
        needed = '.'.join(map(str, FEATURES[feature]))
        raise RuntimeError(f'{feature} needs torch >= {needed}; found torch {torch.__version__}')


def is_compiling() -> bool:
    """Whether torch.compile or torch.export is tracing the caller."""
    if hasattr(torch.compiler, 'is_compiling'):
        return torch.compiler.is_compiling()
    return torch._dynamo.is_compiling()


def is_exporting() -> bool:
    """Whether torch.export (or the dynamo ONNX exporter) is tracing the caller."""
    return hasattr(torch.compiler, 'is_exporting') and torch.compiler.is_exporting()


# Before torch 2.4, torch.is_autocast_enabled() takes no device and answers for CUDA.
_AUTOCAST_BY_DEVICE = torch_version() >= (2, 4)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device`` (which then casts input, weight and bias)."""
    if device.type not in ('cpu', 'cuda'):
        return False
    if _AUTOCAST_BY_DEVICE:
        return torch.is_autocast_enabled(device.type)
    return torch.is_autocast_cpu_enabled() if device.type == 'cpu' else \
        torch.is_autocast_enabled()


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The dtype autocast runs ``device``'s convolutions in."""
    if _AUTOCAST_BY_DEVICE:
        return torch.get_autocast_dtype(device.type)
    return torch.get_autocast_cpu_dtype() if device.type == 'cpu' else \
        torch.get_autocast_gpu_dtype()


def onnx_export_opset() -> int:
    """The opset of the TorchScript-based ONNX export in progress."""
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # torch < 2.9
        from torch.onnx._globals import GLOBALS
    return GLOBALS.export_onnx_opset_version


def onnx_export(model: torch.nn.Module, args: tuple, path, opset_version: int, dynamo: bool,
                **kwargs) -> None:
    """torch.onnx.export with the dynamo exporter (``dynamo=True``; a RuntimeError naming the
    torch it needs on an older one) or the TorchScript-based one, on every supported torch."""
    if dynamo:
        require_feature('the dynamo ONNX exporter')
        torch.onnx.export(model, args, path, opset_version=opset_version, dynamo=True, **kwargs)
    elif torch_version() >= (2, 5):  # where dynamo= appeared
        torch.onnx.export(model, args, path, opset_version=opset_version, dynamo=False, **kwargs)
    else:
        torch.onnx.export(model, args, path, opset_version=opset_version, **kwargs)


# torch.library.Library objects of the fallbacks: a registration lasts as long as its library.
_LIBRARIES: Dict[str, torch.library.Library] = {}


def _library(namespace: str) -> torch.library.Library:
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, 'IMPL')
    return _LIBRARIES[namespace]


def register_fake(qualname: str, fake: Callable) -> None:
    """``fake`` as the shape function of the op ``qualname`` ('namespace::name'):
    torch.library.register_fake (torch 2.4), impl_abstract (2.2) or a Meta kernel (2.1)."""
    if hasattr(torch.library, 'register_fake'):
        torch.library.register_fake(qualname)(fake)
    elif hasattr(torch.library, 'impl_abstract'):
        torch.library.impl_abstract(qualname)(fake)
    else:
        namespace, name = qualname.split('::')
        _library(namespace).impl(name, fake, 'Meta')


def register_autograd(qualname: str, backward: Callable, setup_context: Callable) -> None:
    """The op ``qualname`` made differentiable with ``backward(ctx, *grads)`` and
    ``setup_context(ctx, inputs, output)``, as torch.library.register_autograd (torch 2.4)
    takes them; before 2.4, an Autograd kernel that runs them in a torch.autograd.Function."""
    if hasattr(torch.library, 'register_autograd'):
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
        return
    namespace, name = qualname.split('::')
    op = getattr(getattr(torch.ops, namespace), name).default
    arguments = op._schema.arguments

    class Function(torch.autograd.Function):

        @staticmethod
        def forward(ctx, *inputs):
            with torch._C._AutoDispatchBelowAutograd():
                output = op(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def autograd_kernel(*args, **kwargs):
        # The dispatcher leaves out trailing arguments at their defaults: every input is given
        # to setup_context, as register_autograd does.
        inputs = list(args) + [kwargs[a.name] if a.name in kwargs else a.default_value
                               for a in arguments[len(args):]]
        return Function.apply(*inputs)

    _library(namespace).impl(name, autograd_kernel, 'Autograd')

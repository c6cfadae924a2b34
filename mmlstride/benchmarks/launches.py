"""The launch count (``tools/count_launches.py``): the operations one LSConv forward+backward
makes, counted with torch.profiler: the memory-touching ATen calls of mmlstride's host code, its
calls of the sampling kernels and, on CUDA, the kernels launched.

The host code is what both backends share (tiling, GEMMs, copies, bias, buffers): each
memory-touching ATen call is a kernel launch and a pass over memory on CUDA. The CPU forward's
float32 products through oneDNN (a copy and a bias add each, CPU only) are turned off while
counting, so that the CPU counts are those of the host code CUDA runs."""
import collections
from typing import Any, Dict, Iterable, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from ..ops import LSConv2d
from ..testing import onednn_enabled

# ATen calls that only describe memory (views, allocations, metadata): no kernel, no pass.
NO_MEMORY_TRAFFIC = {
    'aten::empty', 'aten::empty_strided', 'aten::view', 'aten::narrow', 'aten::slice',
    'aten::select', 'aten::as_strided', 'aten::transpose', 'aten::expand', 'aten::expand_as',
    'aten::unsqueeze', 'aten::squeeze', 'aten::detach', 'aten::alias', 'aten::t',
    'aten::_reshape_alias', 'aten::reshape', 'aten::permute', 'aten::resize_',
    'aten::lift_fresh', 'aten::_unsafe_view', 'aten::contiguous', 'aten::to',
    'aten::result_type', 'aten::empty_like', 'aten::view_as', 'aten::set_', 'detach',
    'aten::resolve_conj', 'aten::resolve_neg',
}

# The host code's calls of the backend sampling kernels (one or more launches each on CUDA).
SAMPLING = {'mmlstride::prepare_stride', 'mmlstride::im2col', 'mmlstride::forward_pixels',
            'mmlstride::backward_sampling'}

# The CPU-only forward kernel that also makes its GEMMs, per block of pixels in each thread:
# those calls are its own, not the host code's.
FUSED_KERNELS = {'mmlstride::forward_pixels'}

# (name, batch, channels in = out, input size): stride-2 3x3 layers as in the op benchmark.
SHAPES = [('r50-s2', 8, 128, 56), ('r50-s4', 8, 512, 14), ('det-200', 2, 64, 200)]


def host_calls(events: Iterable[Any]) -> Tuple[collections.Counter, int]:
    """The memory-touching ATen calls that mmlstride's host code makes itself (not their
    internals), by name, and the number of sampling calls."""
    calls = collections.Counter()
    sampling = 0
    for event in events:
        if event.name in SAMPLING:
            sampling += 1
        elif event.name.startswith('aten::') and event.name not in NO_MEMORY_TRAFFIC:
            caller = event.cpu_parent
            while caller is not None and caller.name in NO_MEMORY_TRAFFIC:
                caller = caller.cpu_parent  # e.g. a copy made by aten::contiguous
            if (caller is not None and not caller.name.startswith('aten::')
                    and caller.name not in FUSED_KERNELS):
                calls[event.name] += 1
    return calls, sampling


def count(name: str, batch: int, channels: int, size: int, device: str) -> Dict[str, object]:
    """Counts for one forward+backward of a stride-2 LSConv2d with bias (stride learned)."""
    layer = LSConv2d(channels, channels, 3, stride=2, padding=1).to(device)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    layer(x).sum().backward()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    # The host code CUDA shares (see the module's docstring).
    with onednn_enabled(False), profile(activities=activities) as prof:
        out = layer(x)
        grad = torch.ones_like(out)
        out.backward(grad)
        if device == 'cuda':
            torch.cuda.synchronize()
    events = prof.events()
    # The op's own work: events inside the forward and backward ops, not the loss or the
    # layer's stride clamp around them.
    inside = [event for event in events if any(
        runs_inside(event, op) for op in ('mmlstride::ls_conv2d', 'mmlstride::ls_conv2d_backward'))]
    calls, sampling = host_calls(inside)
    kernels = sum(1 for event in events if event.device_type == torch.autograd.DeviceType.CUDA)
    return dict(shape=name, aten=sum(calls.values()), sampling=sampling,
                kernels=kernels if device == 'cuda' else None, calls=calls)


def runs_inside(event: Any, name: str) -> bool:
    """Whether ``event`` runs inside an event called ``name``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False

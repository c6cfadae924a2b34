"""The op benchmark's library (``tools/benchmark_op.py``): the shapes, the methods compared
(LSConv, ``F.conv2d`` at the nominal stride, the pure-PyTorch form, deformable convs with the
equivalent offsets), their timing, peak memory, the floors (GEMM rate, copy bandwidth), the
profile of LSConv's time and the forward loop."""
import contextlib
import gc
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import ls_conv2d, ls_conv2d_reference
from .timing import captured, elapsed_ms, interleaved_ratio


KERNEL = 3

PADDING = 1

NOMINAL_STRIDE = 2

FRACTIONAL_STRIDE = (1.9, 2.1)


@dataclass(frozen=True)
class Shape:
    """One strided 3x3 layer: batch, channels in = out, input height and width."""
    name: str
    batch: int
    channels: int
    height: int
    width: int

    @property
    def out_size(self) -> Tuple[int, int]:
        """Output height and width at the nominal stride."""
        return tuple((n + 2 * PADDING - KERNEL) // NOMINAL_STRIDE + 1
                     for n in (self.height, self.width))

    def multiply_adds(self) -> int:
        """Multiply-adds of one forward pass (backward does twice as many)."""
        return self.batch * self.channels**2 * KERNEL**2 * math.prod(self.out_size)

# ResNet-50's strided 3 x 3 layers at batch 8 (CPU) and 32 (a GPU's training batch), and
# detection-size maps (an 800 x 1333 image's stride-4 map: 200 x 336 after padding to 32).
SHAPES = {
    s.name: s
    for s in (Shape('r50-s2', 8, 128, 56, 56), Shape('r50-s3', 8, 256, 28, 28),
              Shape('r50-s4', 8, 512, 14, 14), Shape('det-200', 2, 64, 200, 200),
              Shape('r50-s2-b32', 32, 128, 56, 56), Shape('r50-s3-b32', 32, 256, 28, 28),
              Shape('r50-s4-b32', 32, 512, 14, 14), Shape('det-256', 2, 256, 200, 336))
}

CPU_SHAPES = ('r50-s2', 'r50-s3', 'r50-s4', 'det-200')


@dataclass
class Problem:
    """Leaves of one benchmark call and a fixed output gradient."""
    input: Tensor
    weight: Tensor
    bias: Tensor
    stride: Tensor
    grad_output: Tensor

    def leaves(self) -> List[Tensor]:
        """The tensors that get gradients."""
        return [self.input, self.weight, self.bias, self.stride]


def make_problem(shape: Shape, dtype: torch.dtype, device: torch.device) -> Problem:
    """Random leaves of ``shape`` (seeded; the weight scaled by 1 / sqrt(fan-in)), the fractional
    stride, and an output gradient."""
    gen = torch.Generator().manual_seed(0)

    def leaf(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device, dtype).requires_grad_()

    fan_in = shape.channels * KERNEL**2
    out = shape.out_size
    return Problem(
        input=leaf(shape.batch, shape.channels, shape.height, shape.width),
        weight=leaf(shape.channels, shape.channels, KERNEL, KERNEL, scale=fan_in**-0.5),
        bias=leaf(shape.channels),
        # float32 for float16 and bfloat16, as LSConv2d's parameter under autocast.
        stride=torch.tensor(FRACTIONAL_STRIDE, dtype=torch.promote_types(dtype, torch.float32),
                            device=device, requires_grad=True),
        grad_output=torch.randn(shape.batch, shape.channels, *out, generator=gen).to(
            device, dtype))


def dcn_offset(p: Problem, out: Tuple[int, int]) -> Tensor:
    """Offsets that move a nominal-stride DCN's samples onto LSConv's: (a (s_h - s0), b (s_w - s0))."""
    rows, columns = (torch.arange(n, dtype=p.input.dtype, device=p.input.device) for n in out)
    off_h = (rows * (p.stride[0] - NOMINAL_STRIDE)).view(-1, 1).expand(*out)
    off_w = (columns * (p.stride[1] - NOMINAL_STRIDE)).view(1, -1).expand(*out)
    # Channel 2t is tap t's h offset, 2t + 1 its w offset; every tap moves alike.
    offset = torch.stack((off_h, off_w)).repeat(KERNEL * KERNEL, 1, 1).to(p.input.dtype)
    return offset.unsqueeze(0).expand(p.input.shape[0], -1, -1, -1).contiguous()


def available_methods(device: torch.device) -> Dict[str, Callable[[Problem, Tuple[int, int]], Tensor]]:
    """Name -> forward function(problem, output size) for the methods installed here."""
    methods = {
        'lsconv': lambda p, out: ls_conv2d(p.input, p.weight, p.stride, p.bias, PADDING, 1, 1,
                                           out),
        'conv2d': lambda p, out: F.conv2d(p.input, p.weight, p.bias, NOMINAL_STRIDE, PADDING),
        'pytorch': lambda p, out: ls_conv2d_reference(p.input, p.weight, p.stride, p.bias,
                                                      (PADDING, PADDING), (1, 1), 1, out),
    }
    try:
        from mmcv.ops import deform_conv2d as mmcv_deform_conv2d
        if device.type == 'cpu' or torch.cuda.is_available():
            methods['mmcv_dcn'] = lambda p, out: mmcv_deform_conv2d(
                p.input, dcn_offset(p, out), p.weight, NOMINAL_STRIDE, PADDING, 1, 1, 1) + p.bias.view(1, -1, 1, 1)
    except ImportError:
        pass
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
        methods['torchvision_dcn'] = lambda p, out: tv_deform_conv2d(
            p.input, dcn_offset(p, out), p.weight, p.bias, NOMINAL_STRIDE, PADDING)
    except (ImportError, RuntimeError):
        pass
    return methods


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on ``device`` (CUDA; nothing elsewhere)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_once(forward: Callable, p: Problem, out: Tuple[int, int], device: torch.device,
             inference: bool = True) -> Tuple[float, ...]:
    """(forward seconds, backward seconds, inference seconds) of one call: forward and
    backward with the gradients of every leaf, then (if ``inference``) a forward alone under
    torch.no_grad(); on CUDA between CUDA events (the GPU's time)."""
    for leaf in p.leaves():
        leaf.grad = None
    synchronize(device)
    outputs = []
    forward_ms = elapsed_ms(lambda: outputs.append(forward(p, out)), device)
    backward_ms = elapsed_ms(lambda: outputs.pop().backward(p.grad_output), device)
    if not inference:
        return forward_ms / 1e3, backward_ms / 1e3
    with torch.no_grad():
        inference_ms = elapsed_ms(lambda: forward(p, out), device)
    return forward_ms / 1e3, backward_ms / 1e3, inference_ms / 1e3


def graph_times(forward: Callable, p: Problem, out: Tuple[int, int], repeats: int
                ) -> Optional[Dict[str, Dict[str, float]]]:
    """Forward+backward and no_grad forward, each captured in a CUDA graph, timed over
    ``repeats`` replays (CUDA events): what the GPU takes without the host's launches. None
    where the method cannot be captured."""
    def train_step():
        for leaf in p.leaves():
            leaf.grad = None
        forward(p, out).backward(p.grad_output)

    def inference():
        with torch.no_grad():
            forward(p, out)

    try:
        replays = {'total_ms': captured(train_step), 'inference_ms': captured(inference)}
    except RuntimeError as error:
        print(f'  not captured in a CUDA graph: {str(error).splitlines()[0]}')
        return None
    device = p.input.device
    return {name: summary([elapsed_ms(replay, device) / 1e3 for _ in range(repeats)])
            for name, replay in replays.items()}


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Drops what native code writes to stderr (the profiler's start/stop lines) meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(forward: Callable, p: Problem, out: Tuple[int, int],
                device: torch.device) -> float:
    """Peak bytes allocated through PyTorch during one forward+backward, above what was live before."""
    for leaf in p.leaves():
        leaf.grad = None
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward(p, out).backward(p.grad_output)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                           profile_memory=True) as prof:
        forward(p, out).backward(p.grad_output)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'),
                    key=lambda e: e.start_ns() if hasattr(e, 'start_ns') else e.start_us())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Median, min and max of ``values`` (seconds), in ms."""
    ms = [1e3 * v for v in values]
    return {'median': statistics.median(ms), 'min': min(ms), 'max': max(ms)}


def measure_rates(dtype: torch.dtype, device: torch.device) -> Dict[str, float]:
    """Measured GEMM rate (multiply-adds/s, 2048^3 matmul) and copy bandwidth (bytes/s, read + write)."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    src = torch.randn(64 << 20, device=device).to(dtype)  # 64 Mi elements, past every cache
    dst = torch.empty_like(src)

    def best(fn, repeats=5):
        synchronize(device)
        return min([elapsed_ms(fn, device) for _ in range(repeats + 1)][1:]) / 1e3

    return {
        'gemm_multiply_adds_per_s': 2048**3 / best(lambda: torch.mm(a, b)),
        'copy_bytes_per_s': 2 * src.numel() * src.element_size() / best(lambda: dst.copy_(src)),
    }


def floor_ms(shape: Shape, element_size: int, rates: Dict[str, float]) -> Dict[str, float]:
    """Lower bounds on one forward+backward: three GEMMs' multiply-adds over the GEMM rate, and
    the bytes a strided conv must move (x, y, dy, dx read or written once per pass that needs
    them) or the im2col algorithm moves (plus columns written and read three times) over the
    copy bandwidth."""
    x = shape.batch * shape.channels * shape.height * shape.width
    y = shape.batch * shape.channels * math.prod(shape.out_size)
    columns = KERNEL**2 * y
    conv_elements = (x + y) + (y + x) + (y + x)  # forward, grad_input, grad_weight
    im2col_elements = conv_elements + 3 * 2 * columns
    return {
        'gemm': 1e3 * 3 * shape.multiply_adds() / rates['gemm_multiply_adds_per_s'],
        'conv_bytes': 1e3 * conv_elements * element_size / rates['copy_bytes_per_s'],
        'im2col_bytes': 1e3 * im2col_elements * element_size / rates['copy_bytes_per_s'],
    }


def supported(methods: Dict[str, Callable], p: Problem, out: Tuple[int, int],
              device: torch.device) -> Dict[str, Callable]:
    """The methods that run on this problem (torchvision's deform conv has no bfloat16 kernel,
    say); says which do not."""
    kept = {}
    for name, forward in methods.items():
        try:
            run_once(forward, p, out, device)
            kept[name] = forward
        except (RuntimeError, NotImplementedError, TypeError) as error:
            print(f'{name} skipped for {p.input.dtype}: {str(error).splitlines()[0]}')
    return kept


def benchmark_shape(shape: Shape, dtype: torch.dtype, device: torch.device,
                    methods: Dict[str, Callable], warmup: int, repeats: int,
                    cuda_graph: bool = False) -> List[dict]:
    """One record per method that runs on ``shape`` at ``dtype``: its forward, backward,
    forward+backward and no_grad forward times, peak memory, CUDA-graph times (with
    ``cuda_graph``) and ratios to ``conv2d``'s; none where ``conv2d`` does not run."""
    p = make_problem(shape, dtype, device)
    out = shape.out_size
    methods = supported(methods, p, out, device)
    if 'conv2d' not in methods:
        return []
    times = {name: ([], [], []) for name in methods}
    for name, forward in methods.items():
        for _ in range(warmup):
            run_once(forward, p, out, device)
    gc.disable()  # as timeit does: a collection inside one method's call is noise
    try:
        for _ in range(repeats):
            for name, forward in methods.items():
                for kept, seconds in zip(times[name], run_once(forward, p, out, device)):
                    kept.append(seconds)
    finally:
        gc.enable()
    records = []
    for name, forward in methods.items():
        fwd, bwd, inference = times[name]
        records.append({
            'shape': asdict(shape),
            'dtype': str(dtype).replace('torch.', ''),
            'device': device.type,
            'method': name,
            'forward_ms': summary(fwd),
            'backward_ms': summary(bwd),
            'total_ms': summary([f + b for f, b in zip(fwd, bwd)]),
            'inference_ms': summary(inference),
            'peak_mib': peak_memory(forward, p, out, device) / 2**20,
            'cuda_graph_ms': graph_times(forward, p, out, repeats) if cuda_graph else None,
        })
    conv_fwd, conv_bwd, conv_inference = times['conv2d']
    floor = [f + b for f, b in zip(conv_fwd, conv_bwd)]
    for record in records:
        # Median over repeats of the ratio within a repeat: robust to the machine's drift.
        fwd, bwd, inference = times[record['method']]
        record['ratio_to_conv2d'] = statistics.median(
            (f + b) / c for f, b, c in zip(fwd, bwd, floor))
        record['inference_ratio_to_conv2d'] = statistics.median(
            i / c for i, c in zip(inference, conv_inference))
    return records


def profile_lsconv(shape: Shape, dtype: torch.dtype, device: torch.device,
                   repeats: int = 5) -> List[Tuple[str, float]]:
    """Self time per forward+backward of LSConv by operator (torch.profiler): the GEMMs
    (aten::bmm/baddbmm), the sampling kernels (mmlstride::im2col, ::backward_sampling), the tile
    copies and the rest, largest first."""
    from torch.profiler import ProfilerActivity, profile
    p = make_problem(shape, dtype, device)
    forward = available_methods(device)['lsconv']
    run_once(forward, p, shape.out_size, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with native_stderr_silenced(), profile(activities=activities) as prof:
        for _ in range(repeats):
            run_once(forward, p, shape.out_size, device, inference=False)
    attribute = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    rows = [(e.key, getattr(e, attribute) / 1e3 / repeats) for e in prof.key_averages()]
    return sorted((r for r in rows if r[1] > 0), key=lambda r: -r[1])


def forward_loop(shapes: Sequence[Shape], calls: int) -> Dict[str, Tuple[float, float]]:
    """Prints and returns {shape: (warm, flushed)}: the median ratio of LSConv's no_grad
    forward to F.conv2d's, the two called in turn, with caches warm and flushed."""
    flush = torch.zeros(64 << 20)  # 256 MiB
    ratios = {}
    methods = available_methods(torch.device('cpu'))
    print(f'no_grad forward, lsconv / conv2d, median of {calls} calls in turn')
    for shape in shapes:
        p = make_problem(shape, torch.float32, torch.device('cpu'))
        first, second = (partial(methods[name], p, shape.out_size) for name in ('lsconv', 'conv2d'))
        with torch.no_grad():
            interleaved_ratio(first, second, 3)  # warm-up
            ratios[shape.name] = (interleaved_ratio(first, second, calls),
                                  interleaved_ratio(first, second, calls, flush))
        print(f'{shape.name:10} warm {ratios[shape.name][0]:.2f}x   flushed {ratios[shape.name][1]:.2f}x')
    return ratios

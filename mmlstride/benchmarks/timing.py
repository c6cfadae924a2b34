"""Timing for the benchmark tools: one call's time on CPU or CUDA, CUDA-graph replays, and
the ratio of two functions called in turn."""
import statistics
import time
from typing import Callable, Optional

import torch


def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds ``fn()`` takes: between CUDA events on the current stream on CUDA (the
    GPU's time, not the launches'), by the host clock elsewhere."""
    if device.type != 'cuda':
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def captured(fn: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """``fn`` captured in a CUDA graph (after ``warmup`` calls on a side stream, as capture
    requires), as a function that replays it; the graph reuses the tensors ``fn`` made when
    captured. A RuntimeError where ``fn`` cannot be captured (a host synchronisation, say)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def interleaved_ratio(first: Callable[[], object], second: Callable[[], object], calls: int,
                      flush: Optional[torch.Tensor] = None) -> float:
    """The median over ``calls`` of ``first()``'s host time over ``second()``'s, the two called
    in turn (so drift hits both alike); before each call ``flush``, when given, is written
    once, so that both start from caches holding none of their data."""
    ratios = []
    for _ in range(calls):
        times = []
        for fn in (first, second):
            if flush is not None:
                flush.add_(1)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)

"""The real-size benchmark (``tools/benchmark_real_size.py``): a detector config's model and the
same with mmdet's plain ResNet, a generated batch at the size users train at, the time and peak
memory of training or inference steps in one process, those processes interleaved, and the
table of medians and ratios."""
import inspect
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

VARIANTS = ('plain', 'lsconv')
STEPS = ('train', 'inference')


def build_detector(config: str, variant: str) -> Tuple[nn.Module, Any]:
    """The config's detector (``lsconv``) or the same with mmdet's ResNet (``plain``), seeded,
    and the config."""
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS

    from ..engine import load_config
    cfg = load_config(config)
    if variant == 'plain':
        accepted = inspect.signature(ResNet.__init__).parameters
        backbone = {k: v for k, v in cfg.model.backbone.items() if k == 'type' or k in accepted}
        cfg.model.backbone = dict(backbone, type='ResNet')
    torch.manual_seed(0)
    return MODELS.build(cfg.model), cfg


def generated_batch(batch: int, size: Sequence[int], classes: int) -> dict:
    """``batch`` random images of ``size`` (height, width), each with five random boxes of
    random classes, as mmdet's data loader gives them."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    generator = torch.Generator().manual_seed(0)
    height, width = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                                    generator=generator))
        corner = torch.rand(5, 2, generator=generator) * torch.tensor([width, height]) * 0.7
        extent = (torch.rand(5, 2, generator=generator) * 0.25 + 0.05) * torch.tensor(
            [width, height])
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([corner, corner + extent], 1),
            labels=torch.randint(0, classes, (5, ), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def resident_mib(field: str) -> float:
    """This process's resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MiB."""
    with open('/proc/self/status') as f:
        line = next(line for line in f if line.startswith(field + ':'))
    return int(line.split()[1]) / 1024


def worker(config: str, variant: str, step: str, batch: int, size: Sequence[int], iters: int,
           warmup: int) -> dict:
    """Times ``iters`` steps after ``warmup`` in this process, and the peak memory they took."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model, cfg = build_detector(config, variant)
    head = cfg.model.get('roi_head', {}).get('bbox_head', cfg.model.get('bbox_head', {}))
    data = generated_batch(batch, size, head.get('num_classes', 80))
    times = []
    if step == 'train':
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        run = lambda: model.train_step(data, optim_wrapper)  # noqa: E731
    else:
        model.eval()

        def run():
            with torch.no_grad():
                model.test_step(data)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets the high-water mark to the resident memory now
    before = resident_mib('VmRSS')
    for k in range(warmup + iters):
        start = time.perf_counter()
        run()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return {'variant': variant, 'step': step, 'times': times,
            'peak_mib': resident_mib('VmHWM') - before, 'threads': torch.get_num_threads()}


def measure(script: str, config: str, repeats: int, batch: int, size: Sequence[int],
            iters: int, warmup: int, cwd: str) -> List[dict]:
    """One process per (repeat, variant, step), interleaved: ``script`` (the tool) in its
    ``--worker`` mode, run in ``cwd``, which prints :func:`worker`'s result as its last line."""
    results = []
    for repeat in range(repeats):
        for step in STEPS:
            for variant in VARIANTS:
                print(f'== repeat {repeat + 1} of {repeats}: {variant}, {step}', flush=True)
                command = [sys.executable, script, config, '--worker', variant, step,
                           '--batch', str(batch), '--size', *map(str, size),
                           '--iters', str(iters), '--warmup', str(warmup)]
                process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, cwd=cwd)
                if process.returncode:
                    raise RuntimeError(f'{variant} {step} failed:\n{process.stdout[-3000:]}')
                results.append(json.loads(process.stdout.strip().splitlines()[-1]))
    return results


def summary(results: List[dict]) -> Dict[str, Dict[str, dict]]:
    """Per step and variant: the median seconds over every timed iteration and the median
    peak memory over the processes."""
    table: Dict[str, Dict[str, dict]] = {}
    for step in STEPS:
        for variant in VARIANTS:
            mine = [r for r in results if r['step'] == step and r['variant'] == variant]
            table.setdefault(step, {})[variant] = {
                'seconds': statistics.median(t for r in mine for t in r['times']),
                'peak_mib': statistics.median(r['peak_mib'] for r in mine)}
    return table


def markdown(table: Dict[str, Dict[str, dict]]) -> List[str]:
    """The table's lines (Markdown): per step, both variants' time and peak memory and the
    LSConv detector's ratios to the plain one."""
    lines = ['| step | plain ResNet s | LSConv s | time ratio | plain peak MiB | LSConv peak MiB '
             '| memory ratio |', '|---|---|---|---|---|---|---|']
    for step, both in table.items():
        plain, lsconv = both['plain'], both['lsconv']
        lines.append(f"| {step} | {plain['seconds']:.2f} | {lsconv['seconds']:.2f} | "
                     f"{lsconv['seconds'] / plain['seconds']:.2f}x | {plain['peak_mib']:.0f} | "
                     f"{lsconv['peak_mib']:.0f} | {lsconv['peak_mib'] / plain['peak_mib']:.2f}x |")
    return lines

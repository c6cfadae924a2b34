"""A detector config's cost at the size users train at, against the same detector with mmdet's
plain ResNet: one training iteration and inference, time and peak memory.

    python tools/benchmark_real_size.py [CONFIG] [--size 800 1333] [--batch 2] [--repeats 3]

Both detectors are built from CONFIG (default: Faster R-CNN R-50-FPN with LSConv,
configs/lsconv/faster-rcnn_r50-ls_fpn_1x_coco.py), the plain one with its backbone's type set
to mmdet's ResNet (LSResNet's own options dropped), with random weights (the same for both:
the same seed) and a generated batch of images of ``--size`` with five boxes each (no
download). A training iteration is mmengine's ``train_step`` (data preprocessing, forward,
backward and the config's optimizer step); inference is ``test_step``. Each (detector, step)
runs in its own process, ``--iters`` timed after ``--warmup``; its peak memory is the highest
resident memory while the steps ran (Linux: the high-water mark, reset once the model and
batch are built) less the resident memory then. The processes are interleaved over
``--repeats``, and the table gives medians and the LSConv detector's ratios to the plain one.
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'lsconv', 'faster-rcnn_r50-ls_fpn_1x_coco.py')
VARIANTS = ('plain', 'lsconv')
STEPS = ('train', 'inference')


def build_detector(config: str, variant: str):
    """The config's detector (``lsconv``) or the same with mmdet's ResNet (``plain``), seeded,
    and the config."""
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS

    from mmlstride.engine import load_config
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


def measure(args) -> List[dict]:
    """One worker process per (repeat, variant, step), interleaved."""
    results = []
    for repeat in range(args.repeats):
        for step in STEPS:
            for variant in VARIANTS:
                print(f'== repeat {repeat + 1} of {args.repeats}: {variant}, {step}', flush=True)
                command = [sys.executable, os.path.abspath(__file__), args.config, '--worker',
                           variant, step, '--batch', str(args.batch), '--size', *map(str, args.size),
                           '--iters', str(args.iters), '--warmup', str(args.warmup)]
                process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, cwd=REPO)
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
    lines = ['| step | plain ResNet s | LSConv s | time ratio | plain peak MiB | LSConv peak MiB '
             '| memory ratio |', '|---|---|---|---|---|---|---|']
    for step, both in table.items():
        plain, lsconv = both['plain'], both['lsconv']
        lines.append(f"| {step} | {plain['seconds']:.2f} | {lsconv['seconds']:.2f} | "
                     f"{lsconv['seconds'] / plain['seconds']:.2f}x | {plain['peak_mib']:.0f} | "
                     f"{lsconv['peak_mib']:.0f} | {lsconv['peak_mib'] / plain['peak_mib']:.2f}x |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1333),
                        metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3, help='processes per detector and step')
    parser.add_argument('--iters', type=int, default=2, help='timed steps per process')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--worker', nargs=2, metavar=('VARIANT', 'STEP'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ('batch', 'repeats', 'iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)}: expected >= 1')
    if args.warmup < 0 or min(args.size) < 32:
        parser.error(f'--warmup {args.warmup} --size {args.size}: expected >= 0 and >= 32')
    if args.worker:
        result = worker(args.config, *args.worker, args.batch, args.size, args.iters,
                        args.warmup)
        print(json.dumps(result))
        return result
    results = measure(args)
    table = summary(results)
    threads = sorted({r['threads'] for r in results})
    print(f'\n{os.path.relpath(args.config, REPO)} at {args.size[0]} x {args.size[1]}, batch '
          f'{args.batch}, random weights, {"/".join(map(str, threads))} threads; medians of '
          f'{args.repeats} processes x {args.iters} steps:\n')
    print('\n'.join(markdown(table)))
    report = {'config': args.config, 'size': list(args.size), 'batch': args.batch,
              'table': table, 'results': results}
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    sys.exit(main() and 0)

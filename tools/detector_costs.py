"""What a detector config costs: backbone multiply-adds per image, inference and training time.

Prints (and with --out writes) a JSON object:
- ``backbone_macs``: multiply-adds of the backbone on one image of the config's test size,
  counted by mmengine's get_model_complexity_info (LSConv included: importing mmlstride
  registers its counting rule);
- ``inference_ms_per_image``: median wall time of the model's test step on one val image
  (batch 1, through the test pipeline, after warm-up), with --checkpoint's weights if given;
  its box decoding and NMS take longer the more boxes score above the threshold, so it
  depends on the weights;
- ``network_ms_per_image``: median wall time of the network alone (backbone, neck and head
  outputs, no post-processing) on one random image of the test size, the same weights;
- ``train_s_per_iter``: median wall time of a training iteration (the config's batch,
  optimizer and hooks) over --train-iters iterations after --warmup.
Times are for this process's threads (OMP_NUM_THREADS); measure one config at a time, with
nothing else running, and compare in ratios.

    python tools/detector_costs.py CONFIG [--checkpoint CKPT] [--out costs.json]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.config import DictAction

from mmlstride.engine import load_config, load_weights  # the import registers LSConv's count


def test_size(cfg) -> tuple:
    """(height, width) of the config's test images: its test pipeline's Resize scale."""
    resize = next(step for step in cfg.test_dataloader.dataset.pipeline
                  if step['type'] == 'Resize')
    width, height = resize['scale']
    return height, width


def backbone_macs(cfg) -> int:
    """The backbone's multiply-adds on one image of the test size."""
    from mmengine.analysis import get_model_complexity_info
    from mmdet.registry import MODELS
    backbone = MODELS.build(cfg.model.backbone)
    backbone.eval()
    height, width = test_size(cfg)
    info = get_model_complexity_info(backbone, inputs=(torch.zeros(1, 3, height, width),),
                                     show_table=False, show_arch=False)
    return int(info['flops'])


def inference_times(cfg, checkpoint: Optional[str], images: int,
                    warmup: int) -> Tuple[List[float], List[float]]:
    """Seconds per val image, batch 1, after ``warmup`` images: of the test step, and of the
    network alone (tensor mode, which a two-stage detector runs up to its RoI head's outputs)
    on the first val image, preprocessed."""
    from mmdet.registry import DATASETS, MODELS
    from mmengine.dataset import pseudo_collate
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_weights(model, checkpoint)
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    samples = [dataset[i % len(dataset)] for i in range(warmup + images)]
    steps, networks = [], []
    with torch.no_grad():
        first = model.data_preprocessor(pseudo_collate(samples[:1]), False)
        for sample in samples:
            start = time.perf_counter()
            model.test_step(pseudo_collate([sample]))
            steps.append(time.perf_counter() - start)
            start = time.perf_counter()
            model(first['inputs'], first['data_samples'], mode='tensor')
            networks.append(time.perf_counter() - start)
    return steps[warmup:], networks[warmup:]


def training_times(cfg, iterations: int, warmup: int) -> List[float]:
    """Seconds per training iteration of the config's runner, after ``warmup`` iterations."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class IterationTimer(Hook):
        def __init__(self):
            self.times = []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.times.append(time.perf_counter() - self.start)

    cfg = cfg.copy()
    total = warmup + iterations
    cfg.train_cfg.max_iters = total
    cfg.train_cfg.val_interval = total + 1
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator', 'load_from'):
        cfg[key] = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint.update(interval=total + 1, save_last=False)
    with tempfile.TemporaryDirectory() as work_dir:
        cfg.work_dir = work_dir
        cfg.visualizer.name = f'visualizer:{work_dir}'
        runner = Runner.from_cfg(cfg)
        timer = IterationTimer()
        runner.register_hook(timer, 'LOWEST')
        runner.train()
    return timer.times[warmup:]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='weights for the inference timing (default: the '
                                             'initial ones)')
    parser.add_argument('--images', type=int, default=100, help='val images timed')
    parser.add_argument('--train-iters', type=int, default=40, help='training iterations timed')
    parser.add_argument('--warmup', type=int, default=10,
                        help='images and iterations run first, not timed')
    parser.add_argument('--out', help='also write the JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    for name in ('images', 'train_iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} {getattr(args, name)}: expected >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: expected >= 0')
    if args.checkpoint and not os.path.exists(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint}: no such file')
    cfg = load_config(args.config, args.cfg_options)
    inference, network = inference_times(cfg, args.checkpoint, args.images, args.warmup)
    training = training_times(cfg, args.train_iters, args.warmup)
    result = {'config': os.path.abspath(args.config), 'threads': torch.get_num_threads(),
              'test_size': list(test_size(cfg)), 'backbone_macs': backbone_macs(cfg),
              'inference_ms_per_image': 1000 * statistics.median(inference),
              'network_ms_per_image': 1000 * statistics.median(network),
              'train_s_per_iter': statistics.median(training),
              'inference_s': inference, 'network_s': network, 'train_s': training}
    summary = {k: v for k, v in result.items() if k not in ('inference_s', 'network_s',
                                                            'train_s')}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    sys.exit(main() and 0)

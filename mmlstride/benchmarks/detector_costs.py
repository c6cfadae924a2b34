"""The detector cost measurements (``tools/detector_costs.py``): a config's test size, its
backbone's multiply-adds (mmengine's complexity count, LSConv's rule included), the time of its
test step and network per image and of its training iterations."""
import os
import statistics
import tempfile
import time
from typing import Any, List, Optional, Tuple

import torch

# The keys of :func:`costs`'s result that hold every timed sample, not a summary.
SAMPLES = ('inference_s', 'network_s', 'train_s')


def test_size(cfg: Any) -> Tuple[int, int]:
    """(height, width) of the config's test images: its test pipeline's Resize scale."""
    resize = next(step for step in cfg.test_dataloader.dataset.pipeline
                  if step['type'] == 'Resize')
    width, height = resize['scale']
    return height, width


def backbone_macs(cfg: Any) -> int:
    """The backbone's multiply-adds on one image of the test size."""
    from mmengine.analysis import get_model_complexity_info
    from mmdet.registry import MODELS
    backbone = MODELS.build(cfg.model.backbone)
    backbone.eval()
    height, width = test_size(cfg)
    info = get_model_complexity_info(backbone, inputs=(torch.zeros(1, 3, height, width),),
                                     show_table=False, show_arch=False)
    return int(info['flops'])


def inference_times(cfg: Any, checkpoint: Optional[str], images: int,
                    warmup: int) -> Tuple[List[float], List[float]]:
    """Seconds per val image, batch 1, after ``warmup`` images: of the test step, and of the
    network alone (tensor mode, which a two-stage detector runs up to its RoI head's outputs)
    on the first val image, preprocessed."""
    from mmdet.registry import DATASETS, MODELS
    from mmengine.dataset import pseudo_collate

    from ..engine import load_weights
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


def training_times(cfg: Any, iterations: int, warmup: int) -> List[float]:
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


def costs(cfg: Any, config: str, checkpoint: Optional[str], images: int, train_iters: int,
          warmup: int) -> dict:
    """What the detector of ``cfg`` (read from ``config``) costs: the config's path, the
    threads, the test size, the backbone's multiply-adds and the median times, with every timed
    sample (seconds) under the keys of ``SAMPLES``."""
    inference, network = inference_times(cfg, checkpoint, images, warmup)
    training = training_times(cfg, train_iters, warmup)
    return {'config': os.path.abspath(config), 'threads': torch.get_num_threads(),
            'test_size': list(test_size(cfg)), 'backbone_macs': backbone_macs(cfg),
            'inference_ms_per_image': 1000 * statistics.median(inference),
            'network_ms_per_image': 1000 * statistics.median(network),
            'train_s_per_iter': statistics.median(training),
            'inference_s': inference, 'network_s': network, 'train_s': training}

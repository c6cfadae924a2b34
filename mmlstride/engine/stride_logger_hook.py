"""``StrideLoggerHook``: every LSConv's learned stride (and learned phase) as training scalars."""
import json
import os
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_gather, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..ops import LSConv2d

PREFIX = 'stride/'
PHASE_PREFIX = 'phase/'


def learned_strides(model: nn.Module) -> Dict[str, Tuple[float, float]]:
    """{layer name: (s_h, s_w)} of every LSConv with its own stride (followers share their
    leader's)."""
    if is_model_wrapper(model):
        model = model.module
    return {name: tuple(m.learnable_stride.detach().cpu().tolist())
            for name, m in model.named_modules()
            if isinstance(m, LSConv2d) and m.stride_leader is None}


def learned_phases(model: nn.Module) -> Dict[str, Tuple[float, float]]:
    """{layer name: (t_h, t_w)} of every LSConv with a learned phase of its own."""
    if is_model_wrapper(model):
        model = model.module
    return {name: tuple(m.learnable_phase.detach().cpu().tolist())
            for name, m in model.named_modules()
            if isinstance(m, LSConv2d) and m.learnable_phase is not None}


@HOOKS.register_module()
class StrideLoggerHook(Hook):
    """Logs every LSConv's (s_h, s_w), and learned phase (t_h, t_w), during training.

    At the start, every ``interval`` iterations and at the end, the strides go
    to the runner's visualizer as scalars ``stride/<layer>/h`` and
    ``stride/<layer>/w`` (with the iteration as step: the local backend writes
    them to ``vis_data/scalars.json``, TensorBoard or W&B backends show them
    as curves), the learned phases as ``phase/<layer>/h`` and ``.../w``, and one
    line of each to the runner's logger. In distributed training it also
    checks that every rank holds the same strides and phases, and raises if they
    differ.
    ``tools/plot_strides.py`` draws a run's trajectories.

    Args:
        interval: iterations between two records.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50) -> None:
        if interval < 1:
            raise ValueError(f'interval={interval} expected >= 1')
        self.interval = interval

    def before_train(self, runner) -> None:
        self._record(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self._record(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        if runner.iter % self.interval:
            self._record(runner, runner.iter)

    def _record(self, runner, step: int) -> None:
        strides = learned_strides(runner.model)
        if not strides:
            return
        phases = learned_phases(runner.model)
        scalars = {}
        for prefix, values in ((PREFIX, strides), (PHASE_PREFIX, phases)):
            for name, (value_h, value_w) in values.items():
                scalars[f'{prefix}{name}/h'] = value_h
                scalars[f'{prefix}{name}/w'] = value_w
        note = ''
        world_size = get_world_size()
        if world_size > 1:
            values = torch.tensor([v for grid in (strides, phases) for pair in grid.values()
                                   for v in pair], dtype=torch.float64)
            gathered = all_gather(values)
            if any(not torch.equal(other, gathered[0]) for other in gathered):
                raise RuntimeError(f'learned strides and phases at iter {step} differ across '
                                   'ranks: '
                                   f'{[g.tolist() for g in gathered]}, expected identical')
            note = f' (identical on {world_size} ranks)'
        runner.visualizer.add_scalars(scalars, step=step)
        runner.logger.info(f'strides at iter {step}{note}: ' + ', '.join(
            f'{name} ({s_h:.3f}, {s_w:.3f})' for name, (s_h, s_w) in strides.items()))
        if phases:
            runner.logger.info(f'phases at iter {step}: ' + ', '.join(
                f'{name} ({t_h:.3f}, {t_w:.3f})' for name, (t_h, t_w) in phases.items()))


def read_stride_trajectories(scalars_json: str, prefix: str = PREFIX
                             ) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """{layer: {'h': [(step, s_h)...], 'w': [...]}} from a local visualizer backend's
    scalars.json (one JSON object per line); the learned phases' with ``prefix=PHASE_PREFIX``."""
    trajectories: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    with open(scalars_json) as f:
        for line in f:
            record = json.loads(line)
            step = record.get('step')
            for key, value in record.items():
                if key.startswith(prefix):
                    layer, axis = key[len(prefix):].rsplit('/', 1)
                    trajectories.setdefault(layer, {'h': [], 'w': []})[axis].append((step, value))
    return trajectories


def find_scalars_json(work_dir: str) -> Optional[str]:
    """The newest ``<timestamp>/vis_data/scalars.json`` under a run's work_dir, if any."""
    found = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files and os.path.basename(root) == 'vis_data':
            found.append(os.path.join(root, 'scalars.json'))
    return max(found, key=os.path.getmtime) if found else None

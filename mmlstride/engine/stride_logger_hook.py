"""``StrideLoggerHook``: every LSConv's learned stride (and learned phase) as training scalars."""
import json
import os
from typing import Dict, List, Optional, Tuple

from mmengine.dist import all_gather_object, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
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


def grid_states(model: nn.Module) -> Dict[str, Dict[str, object]]:
    """{layer name: {state: value}} of every LSConv: what ranks of a distributed run must hold
    alike. The states: ``leader`` (the layer whose grid it follows, None for its own), and for
    a layer with its own grid ``stride`` and ``stride learning`` (requires_grad), ``learned
    phase`` and ``phase learning`` (None without one), ``fixed phase`` (None without one)."""
    if is_model_wrapper(model):
        model = model.module
    names = {id(m): name for name, m in model.named_modules()}
    states = {}
    for name, m in model.named_modules():
        if not isinstance(m, LSConv2d):
            continue
        leader = m.stride_leader
        state: Dict[str, object] = {'leader': None if leader is None else names.get(id(leader))}
        if leader is None:
            phase = m.learnable_phase
            state.update({
                'stride': tuple(m.learnable_stride.detach().cpu().tolist()),
                'stride learning': m.learnable_stride.requires_grad,
                'learned phase': None if phase is None else tuple(phase.detach().cpu().tolist()),
                'phase learning': None if phase is None else phase.requires_grad,
                'fixed phase': (None if m.fixed_phase is None else
                                tuple(m.fixed_phase.detach().cpu().tolist())),
            })
        states[name] = state
    return states


def check_ranks_agree(gathered: List[Dict[str, Dict[str, object]]], step: int) -> None:
    """Raises RuntimeError naming the first layer and state in which a rank's grid_states
    differ from rank 0's (values compared exactly)."""
    first = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        for name in sorted(set(first) | set(other)):
            if name not in first or name not in other:
                having = 0 if name in first else rank
                raise RuntimeError(f'LSConv layer {name!r} exists on rank {having} only at iter '
                                   f'{step}; expected the same layers on every rank')
            for state in sorted(set(first[name]) | set(other[name])):
                ours, theirs = first[name].get(state), other[name].get(state)
                if ours != theirs:
                    raise RuntimeError(
                        f'LSConv layer {name!r}: {state} differs across ranks at iter {step}: '
                        f'rank 0 has {ours!r}, rank {rank} has {theirs!r}; expected identical')


class StrideLoggerHook(Hook):
    """Logs every LSConv's (s_h, s_w), and learned phase (t_h, t_w), during training.

    At the start, every ``interval`` iterations and at the end, the strides go
    to the runner's visualizer as scalars ``stride/<layer>/h`` and
    ``stride/<layer>/w`` (with the iteration as step: the local backend writes
    them to ``vis_data/scalars.json``, TensorBoard or W&B backends show them
    as curves), the learned phases as ``phase/<layer>/h`` and ``.../w``, and one
    line of each to the runner's logger. In distributed training it also
    checks that every rank holds the same grids (:func:`grid_states`: strides,
    learned and fixed phases, which learn and which are frozen, who follows whom),
    and raises naming the layer and the state that differ.
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
            check_ranks_agree(all_gather_object(grid_states(runner.model)), step)
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

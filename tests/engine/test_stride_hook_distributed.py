"""The stride hook's cross-rank check in a two-process gloo run: every state that ranks must
hold alike, each planted to differ on one rank, raises on every rank naming the layer and the
state."""
import json
import socket
import subprocess
import sys

import pytest

pytest.importorskip('mmengine')

# Per plant: the layer and the state that differ on rank 1 (see RANKS_CHECK's `plant`).
PLANTS = {
    'stride': ('a', 'stride'),
    'frozen-stride-learning': ('d', 'stride learning'),
    'learned-phase': ('a', 'learned phase'),
    'phase-frozen': ('a', 'phase learning'),
    'fixed-phase': ('b', 'fixed phase'),
    'follower-leader': ('c', 'leader'),
    'layer-missing': ('e', None),
}

RANKS_CHECK = '''
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
from mmlstride.engine import StrideLoggerHook
from mmlstride.ops import LSConv2d


class Net(nn.Module):
    """a: learned stride and phase; b: a fixed phase; c: follows a (or d); d: a frozen stride."""

    def __init__(self, follow='a', extra=False):
        super().__init__()
        self.a = LSConv2d(2, 2, 3, stride=2, padding=1, learn_phase=True)
        self.b = LSConv2d(2, 2, 3, stride=2, padding=1, phase=0.5)
        self.c = LSConv2d(2, 2, 3, stride=2, padding=1)
        self.d = LSConv2d(2, 2, 3, stride=2, padding=1)
        self.d.learnable_stride.requires_grad_(False)
        self.c.follow_stride(getattr(self, follow))
        if extra:
            self.e = LSConv2d(2, 2, 3, stride=2, padding=1)


def after(value):
    return torch.nextafter(value, value + 1)


def plant(name):
    net = Net(follow='d' if name == 'follower-leader' else 'a', extra=name == 'layer-missing')
    with torch.no_grad():
        if name == 'stride':
            net.a.learnable_stride[1] = after(net.a.learnable_stride[1])
        elif name == 'frozen-stride-learning':
            net.d.learnable_stride.requires_grad_(True)
        elif name == 'learned-phase':
            net.a.learnable_phase[0] = after(net.a.learnable_phase[0])
        elif name == 'phase-frozen':
            net.a.learnable_phase.requires_grad_(False)
        elif name == 'fixed-phase':
            net.b.fixed_phase[0] = after(net.b.fixed_phase[0])
    return net


class Runner:
    iter = 3

    def __init__(self, model):
        self.model = model
        self.lines = []
        self.visualizer = type('V', (), {'add_scalars': lambda *a, **k: None})()
        self.logger = type('L', (), {'info': lambda _, line: self.lines.append(line)})()


dist.init_process_group('gloo')
rank = dist.get_rank()
results = {}
for name in ['none'] + sys.argv[2].split(','):
    runner = Runner(Net() if rank == 0 or name == 'none' else plant(name))
    try:
        StrideLoggerHook(interval=1)._record(runner, runner.iter)
        results[name] = 'no error: ' + ' | '.join(runner.lines)
    except RuntimeError as error:
        results[name] = str(error)
with open(f'{sys.argv[1]}/rank{rank}.json', 'w') as f:
    json.dump(results, f)
dist.barrier()
# torch 2.1's ProcessGroupGloo can deadlock in its destructor (it joins a worker thread that
# waits for the GIL the joining thread holds): leave without finalizers once both ranks have
# written their results.
os._exit(0)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp('ranks')
    script = out / 'check.py'
    script.write_text(RANKS_CHECK)
    # The script lies outside the checkout: the ranks import the mmlstride under test through
    # the PYTHONPATH conftest.py sets.
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         f'--master_port={free_port()}', str(script), str(out), ','.join(PLANTS)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f'rank{rank}.json').read_text()) for rank in (0, 1)]


def test_ranks_that_agree_are_noted(rank_results):
    for results in rank_results:
        assert results['none'].startswith('no error: strides at iter 3 (identical on 2 ranks)')


@pytest.mark.parametrize('plant', list(PLANTS))
def test_each_state_that_differs_raises_on_every_rank(rank_results, plant):
    layer, state = PLANTS[plant]
    for results in rank_results:
        message = results[plant]
        if state is None:
            assert message.startswith(f"LSConv layer '{layer}' exists on rank 1 only"), message
        else:
            assert message.startswith(f"LSConv layer '{layer}': {state} differs across ranks "
                                      'at iter 3'), message

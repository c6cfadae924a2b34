"""StrideLoggerHook on a stub runner: when it records, what it logs (strides, learned phases,
every layer), through a model wrapper, and the cross-rank check's step (the two-process runs
are in test_stride_hook_distributed.py)."""
import pytest
import torch

from conftest import require_module

require_module('mmengine')

from mmlstride.engine import (StrideLoggerHook, learned_phases, learned_strides,  # noqa: E402
                              stride_logger_hook)
from mmlstride.ops import LSConv2d  # noqa: E402


class StubRunner:
    """What StrideLoggerHook reads of a Runner: the model, the iteration, a visualizer and a
    logger that keep what they are given."""

    def __init__(self, model):
        self.model, self.iter, self.records, self.lines = model, 0, [], []
        self.visualizer = type('Visualizer', (), {'add_scalars': lambda _, scalars, step:
                                                  self.records.append((step, scalars))})()
        self.logger = type('Logger', (), {'info': lambda _, line: self.lines.append(line)})()


def run_stride_hook(hook, runner, iterations):
    hook.before_train(runner)
    for runner.iter in range(iterations):
        hook.after_train_iter(runner, runner.iter)
    runner.iter = iterations
    hook.after_train(runner)


@pytest.mark.parametrize('iterations, steps', [(5, [0, 2, 4, 5]), (4, [0, 2, 4])])
def test_stride_hook_records_every_interval_and_at_the_end(iterations, steps):

    runner = StubRunner(torch.nn.Sequential(LSConv2d(2, 2, 3, stride=2, padding=1)))
    run_stride_hook(StrideLoggerHook(interval=2), runner, iterations)
    assert [step for step, _ in runner.records] == steps
    assert runner.records[-1][1] == {'stride/0/h': 2.0, 'stride/0/w': 2.0}
    assert runner.lines[-1] == f'strides at iter {steps[-1]}: 0 (2.000, 2.000)'


def test_stride_hook_raises_when_ranks_disagree(monkeypatch):
    """The hook gathers every rank's grid states; equal ones are noted in the log, a
    difference raises (the two-process runs are in tests/engine/test_stride_hook_distributed.py)."""

    runner = StubRunner(torch.nn.Sequential(LSConv2d(2, 2, 3, stride=2, padding=1)))
    monkeypatch.setattr(stride_logger_hook, 'get_world_size', lambda: 2)
    monkeypatch.setattr(stride_logger_hook, 'all_gather_object', lambda states: [states, states])
    run_stride_hook(StrideLoggerHook(interval=1), runner, 1)
    assert runner.lines[-1].startswith('strides at iter 1 (identical on 2 ranks)')

    def stride_differs(states):
        other = {name: dict(state) for name, state in states.items()}
        other['0']['stride'] = (2.0, 2.000001)
        return [states, other]

    monkeypatch.setattr(stride_logger_hook, 'all_gather_object', stride_differs)
    with pytest.raises(RuntimeError, match="layer '0': stride differs across ranks"):
        StrideLoggerHook(interval=1).before_train(runner)


def two_layers():
    """A stride-2 layer with a learned phase started at (0, 0.125), and a stride-1.5 one with a
    learned phase started at (0.25, 0.5)."""
    return torch.nn.Sequential(
        LSConv2d(2, 2, 3, stride=2, padding=1, learn_phase=True, initial_phase=(0.0, 0.125)),
        LSConv2d(2, 2, 3, stride=1, padding=1, initial_stride=1.5, learn_phase=True,
                 initial_phase=(0.25, 0.5)))


def test_stride_hook_default_interval_and_its_check():
    runner = StubRunner(two_layers())
    run_stride_hook(StrideLoggerHook(), runner, 101)
    assert [step for step, _ in runner.records] == [0, 50, 100, 101]
    with pytest.raises(ValueError, match=r'^interval=0 expected >= 1$'):
        StrideLoggerHook(interval=0)


def test_stride_hook_logs_every_layers_stride_and_learned_phase():
    runner = StubRunner(two_layers())
    StrideLoggerHook().before_train(runner)
    assert runner.records == [(0, {'stride/0/h': 2.0, 'stride/0/w': 2.0, 'stride/1/h': 1.5,
                                   'stride/1/w': 1.5, 'phase/0/h': 0.0, 'phase/0/w': 0.125,
                                   'phase/1/h': 0.25, 'phase/1/w': 0.5})]
    assert runner.lines == ['strides at iter 0: 0 (2.000, 2.000), 1 (1.500, 1.500)',
                            'phases at iter 0: 0 (0.000, 0.125), 1 (0.250, 0.500)']


def test_strides_and_phases_read_through_a_model_wrapper():
    """Named as in the model itself, not with the wrapper's ``module.`` prefix."""
    wrapped = torch.nn.DataParallel(two_layers())
    assert learned_strides(wrapped) == {'0': (2.0, 2.0), '1': (1.5, 1.5)}
    assert learned_phases(wrapped) == {'0': (0.0, 0.125), '1': (0.25, 0.5)}


def test_disagreeing_ranks_are_named_with_the_iteration(monkeypatch):
    runner = StubRunner(two_layers())
    runner.iter = 7
    monkeypatch.setattr(stride_logger_hook, 'get_world_size', lambda: 2)
    monkeypatch.setattr(stride_logger_hook, 'all_gather_object',
                        lambda states: [states, {name: {**state, 'leader': 'x'}
                                                 for name, state in states.items()}])
    with pytest.raises(RuntimeError, match="^LSConv layer '0': leader differs across ranks at "
                                           "iter 7: rank 0 has None, rank 1 has 'x'"):
        StrideLoggerHook().before_train(runner)

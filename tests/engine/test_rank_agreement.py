"""What ranks must hold alike, in one process: every LSConv's grid states read from a model (or
its wrapper), and the check on them gathered, with the rank, layer and state each message
names, for three ranks and layers or states held by one side only (the two-process gloo run
is tests/engine/test_stride_hook_distributed.py)."""
import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')

from mmlstride.engine.stride_logger_hook import check_ranks_agree, grid_states  # noqa: E402
from mmlstride.ops import LSConv2d  # noqa: E402


def test_grid_states_of_each_kind_of_layer():
    """A learned stride and phase, a fixed phase, a frozen stride, a follower; the same through
    a model wrapper."""
    model = nn.Sequential()
    model.add_module('a', LSConv2d(2, 2, 3, stride=2, padding=1, learn_phase=True,
                                   initial_phase=(0.25, -0.5)))
    model.add_module('b', LSConv2d(2, 2, 3, stride=(2, 1), padding=1, phase=0.5))
    model.add_module('c', LSConv2d(2, 2, 1, stride=2))
    model.c.follow_stride(model.a)
    with torch.no_grad():
        model.a.learnable_stride.copy_(torch.tensor([1.75, 2.25]))
    model.b.learnable_stride.requires_grad_(False)
    expected = {
        'a': {'leader': None, 'stride': (1.75, 2.25), 'stride learning': True,
              'learned phase': (0.25, -0.5), 'phase learning': True, 'fixed phase': None},
        'b': {'leader': None, 'stride': (2.0, 1.0), 'stride learning': False,
              'learned phase': None, 'phase learning': None, 'fixed phase': (0.5, 0.5)},
        'c': {'leader': 'a'},
    }
    assert grid_states(model) == expected
    assert grid_states(nn.DataParallel(model)) == expected


def states(**layers):
    return {name: dict(state) for name, state in layers.items()}


A = dict(stride=(2.0, 2.0), leader=None)


def test_agreeing_ranks_pass():
    check_ranks_agree([states(a=A, b=A)] * 3, step=5)


@pytest.mark.parametrize('gathered,message', [
    # rank 2, not rank 1, differs: the message names it
    ([states(a=A), states(a=A), states(a=dict(A, stride=(2.0, 2.5)))],
     "LSConv layer 'a': stride differs across ranks at iter 7: rank 0 has (2.0, 2.0), "
     "rank 2 has (2.0, 2.5); expected identical"),
    # a layer only rank 0 has
    ([states(a=A, b=A), states(a=A)],
     "LSConv layer 'b' exists on rank 0 only at iter 7; expected the same layers on every rank"),
    # a layer only rank 2 has
    ([states(a=A), states(a=A), states(a=A, z=A)],
     "LSConv layer 'z' exists on rank 2 only at iter 7; expected the same layers on every rank"),
    # a state only one side holds
    ([states(a=A), states(a=dict(A, phase=(0.5, 0.5)))],
     "LSConv layer 'a': phase differs across ranks at iter 7: rank 0 has None, rank 1 has "
     "(0.5, 0.5); expected identical"),
    ([states(a=dict(A, phase=(0.5, 0.5))), states(a=A)],
     "LSConv layer 'a': phase differs across ranks at iter 7: rank 0 has (0.5, 0.5), rank 1 "
     "has None; expected identical"),
])
def test_the_first_difference_is_named(gathered, message):
    with pytest.raises(RuntimeError) as error:
        check_ranks_agree(gathered, step=7)
    assert str(error.value) == message

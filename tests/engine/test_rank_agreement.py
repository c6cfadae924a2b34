"""The cross-rank check on gathered grid states, in one process: which rank and layer and state
each message names, for three ranks, layers or states held by one side only, and exact values
(the two-process gloo run is tests/engine/test_stride_hook_distributed.py)."""
import pytest

pytest.importorskip('mmengine')

from mmlstride.engine.stride_logger_hook import check_ranks_agree  # noqa: E402


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

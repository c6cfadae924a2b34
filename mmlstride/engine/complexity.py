"""Multiply-add counting rules for LSConv in mmengine's complexity analysis.

Its :func:`register` (called on ``import mmlstride`` where mmengine is installed) teaches
``mmengine.analysis`` (``get_model_complexity_info``,
``FlopAnalyzer``, ``ActivationAnalyzer``) the ``mmlstride::ls_conv2d`` operator, so that
model summaries, mmdet's ``get_flops`` tool among them, count LSConv layers. An LSConv layer
counts what ``nn.Conv2d`` counts at the same output size (``conv``) plus its bilinear
sampling (``ls_conv2d_sampling``: four multiply-adds per sampled value, one value per input
channel, kernel tap and output pixel).
"""
from collections import Counter
from typing import Any, List

from mmengine.analysis import complexity_analysis
from mmengine.analysis.jit_handles import conv_flop_count, generic_activation_jit, get_shape

OP_NAME = 'mmlstride::ls_conv2d'
# The clamp of a learned stride to its bounds: a few scalar operations, counted as nothing.
BOUNDED_STRIDE = 'prim::PythonOp._BoundedStride'


def ls_conv2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Multiply-adds of one ``mmlstride::ls_conv2d`` call from the traced shapes of its
    input (N, C, H, W), weight (O, C / groups, kh, kw) and output (N, O, H_out, W_out)."""
    x_shape, w_shape, out_shape = (get_shape(v) for v in (inputs[0], inputs[1], outputs[0]))
    batch, channels = x_shape[:2]
    taps = w_shape[2] * w_shape[3]
    pixels = out_shape[2] * out_shape[3]
    return Counter({'conv': conv_flop_count(x_shape, w_shape, out_shape),
                    'ls_conv2d_sampling': 4 * batch * channels * taps * pixels})


def nothing_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """No multiply-adds."""
    return Counter()


def register() -> None:
    """Adds the rules to mmengine's default operator handles (idempotent)."""
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS[OP_NAME] = ls_conv2d_flop_jit
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS[OP_NAME] = generic_activation_jit('conv')
    for table in (complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS,
                  complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS):
        table[BOUNDED_STRIDE] = nothing_jit  # known, so no "unsupported operator" warning


"""Multiply-add counts of mmengine's complexity analysis for LSConv: the rule registered for
``mmlstride::ls_conv2d`` against nn.Conv2d's count and the sampling's hand count, and whole
backbones against the plain ResNet."""
import pytest
import torch
from mmengine.analysis import ActivationAnalyzer, FlopAnalyzer, get_model_complexity_info
from torch import nn

from conftest import require_module
from mmlstride.ops import BlurConv2d, LSConv2d


def counts(model: nn.Module, x: torch.Tensor) -> FlopAnalyzer:
    analyzer = FlopAnalyzer(model, (x,))
    analyzer.unsupported_ops_warnings(False)
    analyzer.total()  # runs the analysis
    return analyzer


def lsconv_unseen(analyzer: FlopAnalyzer) -> list:
    """The operators of LSConv the analysis did not know (elementwise ops, which mmengine
    counts for no model, aside)."""
    return [op for op in analyzer.unsupported_ops()
            if op.startswith(('mmlstride::', 'prim::PythonOp'))]


@pytest.mark.parametrize('kwargs', [
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(1, 0), groups=2, learn_phase=True),
    dict(stride=2, padding=2, dilation=2, phase=0.5, pivot='centre'),
])
def test_lsconv_counts_the_conv_and_its_sampling(kwargs):
    """The conv's multiply-adds are nn.Conv2d's at the same sizes; the bilinear sampling adds
    four per sampled value (batch x channels x taps x output pixels)."""
    conv_kwargs = {k: v for k, v in kwargs.items() if k not in ('learn_phase', 'phase', 'pivot')}
    x = torch.randn(2, 8, 21, 18)
    ls = counts(LSConv2d(8, 12, 3, **kwargs), x)
    plain = counts(nn.Conv2d(8, 12, 3, **conv_kwargs), x)
    out_h, out_w = nn.Conv2d(8, 12, 3, **conv_kwargs)(x).shape[2:]
    assert not lsconv_unseen(ls) and plain.total() > 0
    assert ls.by_operator() == {'conv': plain.total(),
                                'ls_conv2d_sampling': 4 * 2 * 8 * 9 * out_h * out_w}


def test_lsconv_counts_a_rectangular_kernel():
    x = torch.randn(1, 4, 20, 17)
    ls = counts(LSConv2d(4, 6, (3, 5), stride=2, padding=(1, 2)), x)
    plain = counts(nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2)), x)
    assert ls.by_operator() == {'conv': plain.total(), 'ls_conv2d_sampling': 4 * 4 * 15 * 10 * 9}


def test_model_summary_sees_lsconv():
    """get_model_complexity_info, as users call it, counts an LSConv layer inside a model."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LSConv2d(8, 8, 3, stride=2, padding=1))
    x = torch.randn(1, 3, 16, 16)
    info = get_model_complexity_info(model, inputs=(x,), show_table=False, show_arch=False)
    first = 16 * 16 * 8 * 3 * 9
    second = 8 * 8 * 8 * 8 * 9
    assert info['flops'] == first + second + 4 * 8 * 9 * 64
    assert info['activations'] == 16 * 16 * 8 + 8 * 8 * 8
    activations = ActivationAnalyzer(model, (x,))
    activations.unsupported_ops_warnings(False)
    assert activations.by_operator() == {'conv': 16 * 16 * 8 + 8 * 8 * 8}  # LSConv's as a conv's


def layer_sizes(model: nn.Module, kind: type, x: torch.Tensor) -> list:
    """(layer, input shape, output shape) of every ``kind`` layer of ``model`` on ``x``."""
    sizes, handles = [], []
    for module in model.modules():
        if isinstance(module, kind):
            handles.append(module.register_forward_hook(
                lambda m, inputs, output: sizes.append((m, inputs[0].shape, output.shape))))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return sizes


def test_backbones_count_what_they_compute():
    """LSResNet counts the plain ResNet's multiply-adds plus the sampling of its LSConv layers;
    BlurPool's placement counts each replaced conv at stride 1 plus a depthwise blur."""
    require_module('mmdet')
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    import mmlstride  # noqa: F401  (registrations)
    common = dict(depth=18, base_channels=16, out_indices=(1, 2, 3), init_cfg=None)
    x = torch.randn(1, 3, 64, 64)
    plain, ls, blur = (MODELS.build(dict(type=kind, **common, **extra))
                       for kind, extra in (('ResNet', {}), ('LSResNet', {}),
                                           ('BlurResNet', dict(order='conv-blur'))))
    for model in (plain, ls, blur):
        model.eval()  # mmdet's ResNet.train returns nothing
    sampled = sum(4 * before[1] * m.kernel_size[0] * m.kernel_size[1] * after[2] * after[3]
                  for m, before, after in layer_sizes(ls, LSConv2d, x))
    blurred = layer_sizes(blur, BlurConv2d, x)
    assert len(blurred) == 6  # stages 2-4: the 3 x 3 conv and the shortcut of each first block
    # At stride 1 the conv computes every input pixel (these convs keep the size at stride 1).
    extra = sum(m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                * (before[2] * before[3] - after[2] * after[3])
                + m.out_channels * 9 * after[2] * after[3] for m, before, after in blurred)
    plain, ls, blur = (counts(model, x) for model in (plain, ls, blur))
    assert sampled > 0 and not lsconv_unseen(ls)
    assert ls.by_operator() == {'conv': plain.by_operator()['conv'],
                                'batch_norm': plain.by_operator()['batch_norm'],
                                'ls_conv2d_sampling': sampled}
    assert blur.total() == plain.total() + extra

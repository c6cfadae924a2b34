"""The fixed-grid and backbone benchmarks: what they time computes what they claim."""
import json
import time

import pytest
import torch

from conftest import load_tool, require_module
from mmlstride.benchmarks import backbone, fixed_grid
from mmlstride.benchmarks.timing import captured, elapsed_ms


def test_fixed_grid_benchmark_prints_and_writes_every_method(tmp_path, capsys):
    tool = load_tool('benchmark_fixed_grid')
    out = tmp_path / 'fixed.json'
    tool.main(['--shapes', '1x4x12x10', '--repeats', '1', '--warmup', '0', '--out', str(out)])
    rows = json.loads(out.read_text())['rows']
    assert {(r['kind'], r['step']) for r in rows} == {
        (k, s) for k in fixed_grid.KINDS for s in ('forward', 'forward+backward')}
    assert all(set(r['ms']) == set(fixed_grid.METHODS) and min(r['ms'].values()) > 0
               for r in rows)
    assert capsys.readouterr().out.count('| float32 |') == len(rows)
    with pytest.raises(SystemExit):
        tool.main(['--shapes', '1x4x12'])


@pytest.mark.parametrize('kind', ['3x3 half phase', '1x1 half phase', '3x3 no phase'])
def test_fixed_grid_benchmark_methods_compute_the_same(kind):
    """Every timed method computes the nominal-stride layer of its kind."""
    shape = (2, 4, 11, 14)
    funcs = fixed_grid.methods(kind, shape, 'cpu', torch.float64)
    kernel, padding, phase = fixed_grid.KINDS[kind]
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(4, 4, kernel, kernel, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    outputs = {name: f(x, w, b) for name, f in funcs.items()}
    for name in ('op', 'layer'):
        torch.testing.assert_close(outputs[name], outputs['form'])
    if phase == (0.0, 0.0):
        torch.testing.assert_close(outputs['conv2d'], outputs['form'])


def mmdet_backbones():
    require_module('mmdet')
    from mmdet.models.backbones import ResNet
    from mmlstride.models import LSResNet
    common = dict(depth=50, frozen_stages=1, norm_eval=True, style='pytorch')
    return {'resnet': ResNet(**common), 'default': LSResNet(**common),
            'learned': LSResNet(**common, learn_stride=True)}


def test_backbone_benchmark_computes_what_mmdet_computes():
    """The benchmark's ResNet-50 in each setting has mmdet's (LSResNet's) parameters, which
    require grad where mmdet's do, and computes its outputs and gradients from the same
    weights."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 70, 90, dtype=torch.float64)
    for setting, reference in mmdet_backbones().items():
        reference = reference.double()
        reference.train()  # frozen stages and norm_eval as mmdet trains
        model = backbone.ResNet50(setting).double().train_as_mmdet()
        state = reference.state_dict()
        assert model.state_dict().keys() == state.keys()
        model.load_state_dict(state)
        assert ({n for n, p in model.named_parameters() if p.requires_grad} ==
                {n for n, p in reference.named_parameters() if p.requires_grad})
        found, expected = model(x), reference(x)
        for a, b in zip(found, expected):
            torch.testing.assert_close(a, b)
        sum(o.sum() for o in found).backward()
        sum(o.sum() for o in expected).backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_backbone_benchmark_prints_and_writes_ratios(tmp_path, capsys):
    tool = load_tool('benchmark_backbone')
    out = tmp_path / 'backbone.json'
    tool.main(['--device', 'cpu', '--dtype', 'float32', '--size', '64', '96', '--batch', '1',
               '--repeats', '1', '--warmup', '0', '--out', str(out)])
    report = json.loads(out.read_text())
    assert set(report['ms']['float32']) == set(backbone.SETTINGS)
    assert '| float32 | ' in capsys.readouterr().out


def test_elapsed_ms_times_the_call():
    assert elapsed_ms(lambda: time.sleep(0.02), torch.device('cpu')) >= 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_captured_replays_into_the_tensors_it_made():
    x = torch.ones(4, device='cuda')
    out = []
    replay = captured(lambda: out.append(x * 2))
    x.fill_(3)
    assert elapsed_ms(replay, x.device) >= 0
    assert out[-1].tolist() == [6.0] * 4

"""Export of models holding LSConv: torch.export with dynamic batch, height and width, and ONNX
of standard operators in both forms (GridSample, and the plain convolution of a layer switched
to deploy at whole strides) run in ONNX Runtime against PyTorch, at sizes other than the
traced one."""
import warnings

import pytest
import torch

from conftest import needs_torch_for, require_module
from mmlstride.ops import LSConv2d, ls_conv2d, switch_to_deploy
from mmlstride.ops.ls_conv2d_export import ls_conv2d_at_integer_stride, ls_conv2d_by_sampling
from mmlstride.torch_compat import onnx_export
from mmlstride.testing import random_case, relative_error

# (kernel, stride, padding, dilation, groups, learned stride[, pivot, learned phase]):
# fractional asymmetric strides, groups, dilation, rectangular kernels, asymmetric padding, a
# grid anchored at the centre (its phase depends on the input size) with a learned phase.
LAYERS = [
    dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=1, learned=(1.7, 2.3)),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2), groups=2,
         learned=(2.6, 1.45)),
    dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 2), dilation=(1, 1), groups=4,
         learned=(0.8, 3.1)),
    dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=2, learned=(1.7, 2.3),
         pivot='centre', phase=(0.35, -0.6)),
]
LAYER_IDS = ['3x3', 'rect-groups-dilation', 'asym-pad', 'centre-phase']
TRACED, OTHER_SIZES = (2, 8, 20, 24), [(3, 8, 33, 17), (1, 8, 48, 64), (2, 8, 8, 8)]


def make_layer(spec) -> LSConv2d:
    spec = dict(spec)
    learned = spec.pop('learned')
    phase = spec.pop('phase', None)
    torch.manual_seed(0)
    layer = LSConv2d(8, 12, **spec, learn_phase=phase is not None).eval()
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor(learned))
        if phase is not None:
            layer.learnable_phase.copy_(torch.tensor(phase))
    return layer


EXPORT = needs_torch_for('torch.export with dynamic shapes')
DYNAMO_ONNX = needs_torch_for('the dynamo ONNX exporter')
EXPORTERS = [pytest.param(True, marks=DYNAMO_ONNX), False]


def dynamic_shapes(minimum=8):
    from torch.export import Dim
    return ({0: Dim('batch'), 2: Dim('height', min=minimum), 3: Dim('width', min=minimum)}, )


@pytest.mark.parametrize('seed', range(12))
def test_sampling_decomposition_is_the_op(seed):
    """The export decomposition (one GridSample, one 1 x 1 conv) computes the op
    (float64 random cases: groups, dilation, padding, asymmetric strides)."""
    args = random_case(seed).args()  # the argument order of both
    expected = ls_conv2d(*args)
    found = ls_conv2d_by_sampling(*args)
    assert relative_error(found, expected) < 1e-12


@pytest.mark.parametrize('seed', range(12))
def test_sampling_decomposition_with_a_phase_is_the_op(seed):
    args = random_case(seed, phase=True).args()
    assert relative_error(ls_conv2d_by_sampling(*args), ls_conv2d(*args)) < 1e-12


@EXPORT
@pytest.mark.parametrize('spec', LAYERS, ids=LAYER_IDS)
def test_torch_export_with_dynamic_batch_height_width(spec):
    """torch.export.export of an LSConv2d with dynamic batch, height and width; the exported
    program runs the compiled op at other sizes and gives the eager result."""
    layer = make_layer(spec)
    program = torch.export.export(layer, (torch.randn(TRACED), ), dynamic_shapes=dynamic_shapes())
    for shape in OTHER_SIZES:
        x = torch.randn(shape)
        assert torch.equal(program.module()(x), layer(x))


def onnx_session(model, example, path, opset, dynamo=True, minimum=8):
    """Exports ``model`` to ONNX (dynamic batch, height and width with the default exporter)
    and returns an ONNX Runtime CPU session and the ONNX model."""
    require_module('onnx')
    require_module('onnxscript')
    ort = require_module('onnxruntime')
    import onnx
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if dynamo:
            onnx_export(model, (example, ), path, opset, dynamo=True,
                        dynamic_shapes=dynamic_shapes(minimum), verbose=False)
        else:
            onnx_export(model, (example, ), path, opset, dynamo=False)
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider']), onnx.load(path)


def run_onnx(session, x):
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def attributes(model, op_type, name):
    return [attribute.s for node in model.graph.node if node.op_type == op_type
            for attribute in node.attribute if attribute.name == name]


def assert_standard_operators(model, opset, form='grid_sample'):
    """Only ai.onnx operators at the requested opset, in ``form``: 'grid_sample', GridSample
    as 'bilinear' without align_corners (ONNX Runtime's fast path); 'conv', none."""
    assert [entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')] \
        == [opset]
    assert {node.domain for node in model.graph.node} <= {''}
    samplers = {node.op_type for node in model.graph.node} & {'GridSample', 'Resize'}
    assert samplers == {'grid_sample': {'GridSample'}, 'conv': set()}[form]
    if form == 'grid_sample':
        assert set(attributes(model, 'GridSample', 'mode')) == {b'bilinear'}
        align = [node for node in model.graph.node if node.op_type == 'GridSample']
        assert all(attribute.i == 0 for node in align for attribute in node.attribute
                   if attribute.name == 'align_corners')


@DYNAMO_ONNX
@pytest.mark.parametrize('spec, opset', [(LAYERS[0], 18)] + [(spec, 19) for spec in LAYERS],
                         ids=[f'{LAYER_IDS[0]}-18'] + [f'{i}-19' for i in LAYER_IDS])
def test_onnx_export_runs_in_onnxruntime(spec, opset, tmp_path):
    """torch.onnx.export (the default exporter, dynamic batch, height and width) of an
    LSConv2d gives standard operators whose ONNX Runtime output matches PyTorch to 1e-4 at
    sizes other than the traced one: every layer at opset 19, one at 18 (GridSample is the
    same from opset 16 to 19; 16 and 17 go through the TorchScript exporter below)."""
    layer = make_layer(spec)
    session, model = onnx_session(layer, torch.randn(TRACED), tmp_path / 'layer.onnx', opset)
    assert_standard_operators(model, opset)
    with torch.no_grad():
        for shape in OTHER_SIZES:
            x = torch.randn(shape)
            assert relative_error(run_onnx(session, x), layer(x)) < 1e-4


@pytest.mark.parametrize('spec', [LAYERS[1], LAYERS[3]], ids=[LAYER_IDS[1], LAYER_IDS[3]])
@pytest.mark.parametrize('opset', [16, 17])
def test_onnx_export_torchscript_exporter(opset, spec, tmp_path):
    """The TorchScript-based exporter (dynamo=False) at the traced size, opsets 16 and 17."""
    layer = make_layer(spec)
    x = torch.randn(TRACED)
    session, model = onnx_session(layer, x, tmp_path / 'layer.onnx', opset, dynamo=False)
    assert_standard_operators(model, opset)
    with torch.no_grad():
        assert relative_error(run_onnx(session, x), layer(x)) < 1e-4


def test_onnx_opset_below_16_is_refused(tmp_path):
    require_module('onnx')
    with pytest.raises(ValueError, match=r'opset_version=15 expected 16 to 19'):
        onnx_export(make_layer(LAYERS[0]), (torch.randn(TRACED), ), tmp_path / 'x.onnx', 15,
                    dynamo=False)


@DYNAMO_ONNX
@EXPORT
@pytest.mark.parametrize('stage_conv', [None, dict(type='LSConv'),
                                        dict(type='LSConv', pivot='centre', learn_phase=True)],
                         ids=['default-phase', 'corner', 'centre-phase'])
def test_lsresnet_backbone_exports_to_onnx(stage_conv, tmp_path):
    """An LSResNet-18 backbone with strides (and phases) moved away from nominal exports
    (dynamic sizes from 64 pixels, as mmdet's ResNet does) and its ONNX Runtime features
    match PyTorch at two sizes other than the traced one; torch.export of it too."""
    require_module('mmdet')
    from mmlstride.models import LSResNet
    torch.manual_seed(0)
    backbone = LSResNet(depth=18, out_indices=(1, 2, 3), stage_conv=stage_conv)
    backbone.eval()  # mmdet's ResNet.train returns None
    with torch.no_grad():
        for k, layer in enumerate(m for m in backbone.modules()
                                  if isinstance(m, LSConv2d) and m.stride_leader is None):
            layer.learnable_stride.copy_(torch.tensor([1.8 + 0.1 * k, 2.25 - 0.05 * k]))
            if layer.learnable_phase is not None:
                layer.learnable_phase.copy_(torch.tensor([0.3 - 0.2 * k, 0.1 * k - 0.4]))
    session, _ = onnx_session(backbone, torch.randn(2, 3, 96, 128), tmp_path / 'backbone.onnx',
                              18, minimum=64)  # as mmdet's ResNet exports
    program = torch.export.export(backbone, (torch.randn(2, 3, 96, 128), ),
                                  dynamic_shapes=dynamic_shapes(64))
    with torch.no_grad():
        for shape in [(2, 3, 64, 80), (1, 3, 128, 96)]:
            x = torch.randn(shape)
            features = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            expected = backbone(x)
            for found, exported, wanted in zip(features, program.module()(x), expected):
                assert relative_error(torch.from_numpy(found), wanted) < 1e-4
                assert torch.equal(exported, wanted)


WHOLE_PHASES = [None, (0.0, 0.0), (0.5, 0.5), (0.35, -1.6), (-2.0, 1.0), (0.0, 0.75)]


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('phase', WHOLE_PHASES, ids=str)
def test_integer_stride_form_is_the_op(seed, phase):
    """The deploy form at whole strides (padding moved by the phase's whole part, a 2 x 2
    blend by its fraction, a plain strided convolution) computes the op (float64 random
    cases: groups, dilation, padding, output sizes, strides 1 to 3)."""
    case = random_case(seed)
    strides = (1 + seed % 3, 1 + (seed // 3) % 3)
    input, weight, _, bias, padding, dilation, groups, output_size, _ = case.args()
    for size in (output_size, None):  # given, and the convolution's own (fixed padding)
        found = ls_conv2d_at_integer_stride(input, weight, strides, bias, padding, dilation,
                                            groups, size, phase or (0.0, 0.0))
        expected = ls_conv2d(input, weight, torch.tensor(strides, dtype=torch.float64), bias,
                             padding, dilation, groups, size, phase=phase)
        assert found.shape == expected.shape
        assert relative_error(found, expected) < 1e-12


def deploy_layer(spec, stride, phase, pivot='corner'):
    torch.manual_seed(0)
    layer = LSConv2d(8, 12, kernel_size=spec['kernel_size'], stride=spec['stride'],
                     padding=spec['padding'], dilation=spec['dilation'], groups=spec['groups'],
                     pivot=pivot, learn_phase=phase is not None).eval()
    with torch.no_grad():
        layer.learnable_stride.copy_(torch.tensor(stride))
        if phase is not None:
            layer.learnable_phase.copy_(torch.tensor(phase))
    return layer


@pytest.mark.parametrize('phase', WHOLE_PHASES[:4], ids=str)
@pytest.mark.parametrize('spec', LAYERS[:3], ids=LAYER_IDS[:3])
def test_switch_to_deploy_keeps_the_outputs(spec, phase):
    """A layer switched to deploy computes what it did, holds its stride and phase as numbers
    and no longer trains them; whole strides other than the nominal one too."""
    for stride in (spec['learned'], (3.0, 1.0)):
        layer = deploy_layer(spec, stride, phase)
        x = torch.randn(2, 8, 19, 23)
        with torch.no_grad():
            before = layer(x)
            switch_to_deploy(layer)
            torch.testing.assert_close(layer(x), before)  # a plain conv at whole strides
        assert layer.deploy_stride == pytest.approx(stride)
        assert layer.deploy_phase == (None if phase is None else pytest.approx(phase))
        assert not layer.learnable_stride.requires_grad
        assert layer.weight.requires_grad


def test_switch_to_deploy_centre_pivot_and_followers():
    """Off its nominal stride a centre-pivot layer's phase follows the output size, so it is
    not held as a number and the outputs stay right at other sizes; at the nominal stride it
    is. A follower holds its leader's stride."""
    spec = LAYERS[3]
    for stride, held in ((spec['learned'], False), ((2.0, 2.0), True)):
        layer = deploy_layer(spec, stride, spec['phase'], pivot='centre')
        expected = [layer(torch.randn(1, 8, n, n)) for n in (15, 28)]
        torch.manual_seed(1)
        inputs = [torch.randn(1, 8, n, n) for n in (15, 28)]
        with torch.no_grad():
            expected = [layer(x) for x in inputs]
            switch_to_deploy(layer)
            assert layer.deploy_phase_is_constant == held
            for x, wanted in zip(inputs, expected):
                torch.testing.assert_close(layer(x), wanted)
    leader = deploy_layer(LAYERS[0], (1.75, 2.25), None)
    follower = LSConv2d(8, 4, 3, stride=2, padding=1).eval()
    follower.follow_stride(leader)
    assert switch_to_deploy(torch.nn.Sequential(leader, follower)) == 2
    assert follower.deploy_stride == pytest.approx((1.75, 2.25))


@pytest.mark.parametrize('dynamo', EXPORTERS, ids=['default', 'torchscript'])
@pytest.mark.parametrize('phase', WHOLE_PHASES[2:5], ids=str)
@pytest.mark.parametrize('spec', LAYERS[:3], ids=LAYER_IDS[:3])
def test_deployed_whole_strides_export_as_plain_convolutions(spec, phase, dynamo, tmp_path):
    """Switched to deploy at whole strides, a layer exports with no sampling operator (an
    AveragePool at a half-pixel phase) in either exporter, and matches PyTorch to 1e-4 at
    other sizes (the traced one with dynamo=False)."""
    stride = tuple(float(max(1, round(v))) for v in spec['learned'])
    layer = deploy_layer(spec, stride, phase)
    switch_to_deploy(layer)
    opset = 18 if dynamo else 17
    session, model = onnx_session(layer, torch.randn(TRACED), tmp_path / 'layer.onnx', opset,
                                  dynamo=dynamo)
    assert_standard_operators(model, opset, 'conv')
    pools = {node.op_type for node in model.graph.node} & {'AveragePool'}
    assert pools == ({'AveragePool'} if phase == (0.5, 0.5) else set())
    with torch.no_grad():
        for shape in OTHER_SIZES if dynamo else [TRACED]:
            x = torch.randn(shape)
            assert relative_error(run_onnx(session, x), layer(x)) < 1e-4


@pytest.mark.parametrize('dynamo', EXPORTERS, ids=['default', 'torchscript'])
def test_onnx_export_before_deploy_points_to_switch_to_deploy(dynamo, tmp_path):
    """Exporting a layer not switched to deploy (the slower sampled form) warns and names
    switch_to_deploy; a deployed layer exports without that warning."""
    require_module('onnxscript')
    layer = LSConv2d(8, 12, 3, stride=2, padding=1).eval()
    example = (torch.randn(TRACED), )
    hints = []
    for name in ('sampled', 'plain'):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            onnx_export(layer, example, str(tmp_path / f'{name}.onnx'), 18 if dynamo else 17,
                        dynamo=dynamo, verbose=False)
        hints.append([w for w in caught if 'switch_to_deploy(model)' in str(w.message)])
        switch_to_deploy(layer)
    assert len(hints[0]) >= 1 and hints[1] == []


@EXPORT
@pytest.mark.parametrize('phase', [None, 0.5], ids=str)
def test_torch_export_of_a_deployed_layer(phase):
    """torch.export.export of a layer switched to deploy (its output size then computed from
    the held stride) with dynamic batch, height and width gives the eager result, with no pad
    of its own (at a whole phase, the plain convolution alone)."""
    layer = LSConv2d(8, 12, 3, stride=2, padding=1, phase=phase).eval()
    switch_to_deploy(layer)
    program = torch.export.export(layer, (torch.randn(TRACED), ), dynamic_shapes=dynamic_shapes())
    # the convolution's own padding and floor, whatever the size: no pad of symbolic rows
    operators = [str(node.target) for node in program.graph.nodes if node.op == 'call_function']
    assert not [name for name in operators if 'pad' in name], operators
    for shape in OTHER_SIZES:
        x = torch.randn(shape)
        assert torch.equal(program.module()(x), layer(x))


@pytest.fixture
def onnx_branch(monkeypatch):
    """ls_conv2d as an ONNX export at opset 18 runs it, eagerly: the forms it calls, each with
    the output size it was given, are recorded."""
    from mmlstride.ops import ls_conv2d_function
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    monkeypatch.setattr(ls_conv2d_function, 'onnx_export_opset', lambda: 18)
    calls = []
    for name in ('ls_conv2d_at_integer_stride', 'ls_conv2d_by_sampling'):
        form = getattr(ls_conv2d_function, name)

        def recorded(*args, form=form, name=name):
            calls.append((name, args[7]))  # both forms take output_size eighth
            return form(*args)

        monkeypatch.setattr(ls_conv2d_function, name, recorded)
    return calls


# (stride, phase, output size) -> the form the ONNX export writes and the output size it is
# given ('tensor': a tensor of the values, read at run time)
ONNX_FORMS = [
    ((2, 2), None, None, 'ls_conv2d_at_integer_stride', None),
    ((2, 1), (0.5, -1.0), None, 'ls_conv2d_at_integer_stride', None),
    ((2, 2), (0.5, 0.5), (4, 3), 'ls_conv2d_at_integer_stride', (4, 3)),
    ((2, 2), 'tensor', None, 'ls_conv2d_by_sampling', (4, 4)),
    ('tensor', None, None, 'ls_conv2d_by_sampling', (4, 4)),
    ((1.5, 2), (0.5, 0.5), None, 'ls_conv2d_by_sampling', (5, 4)),
]


@pytest.mark.parametrize('stride, phase, output_size, form, size', ONNX_FORMS, ids=str)
def test_onnx_export_form_of_each_argument_kind(stride, phase, output_size, form, size,
                                                onnx_branch, monkeypatch):
    """In an ONNX export, whole strides with a phase given as numbers (or none) write the plain
    convolution, at the convolution's own size unless one is given (so that a graph exported
    with dynamic axes runs at every size); a stride or phase given as a tensor, or a
    fractional stride, writes the sampling form. Either computes the op's values."""
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 8, 7), torch.randn(6, 4, 3, 3), torch.randn(6)
    values = [(2.0, 2.0) if v == 'tensor' else v for v in (stride, phase)]
    given = [torch.tensor(v) if k == 'tensor' else k for k, v in zip((stride, phase), values)]
    found = ls_conv2d(x, w, given[0], b, 1, 1, 1, output_size, given[1])
    assert onnx_branch == [(form, size)]
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: False)
    expected = ls_conv2d(x, w, torch.tensor(values[0], dtype=torch.float32), b, 1, 1, 1,
                         found.shape[2:], None if values[1] is None else torch.tensor(values[1]))
    assert relative_error(found, expected) < 1e-5


def test_onnx_opsets_without_bilinear_grid_sample_are_refused(onnx_branch, monkeypatch):
    """An ONNX export at an opset other than 16 to 19 is refused with the opsets and why."""
    from mmlstride.ops import ls_conv2d_function
    monkeypatch.setattr(ls_conv2d_function, 'onnx_export_opset', lambda: 15)
    with pytest.raises(ValueError) as error:
        ls_conv2d(torch.randn(1, 2, 6, 6), torch.randn(2, 2, 3, 3), (1.5, 1.5))
    assert str(error.value) == ("opset_version=15 expected 16 to 19: LSConv exports to ONNX "
                                "GridSample (opset 16) with mode 'bilinear' (opsets 16-19)")


def test_layer_exported_before_deploy_warns_naming_switch_to_deploy(onnx_branch):
    """A layer in an ONNX export that was not switched to deploy warns, once per call, that
    it exports the slower sampling form and how to get the plain convolution; a deployed one
    does not."""
    layer = LSConv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        layer(x)
        switch_to_deploy(layer)
        layer(x)
    assert [str(w.message) for w in caught] == [
        'LSConv2d exports its learnable stride as GridSample sampling, 1.5-3x the time of a '
        'plain Conv in ONNX Runtime; call mmlstride.ops.switch_to_deploy(model) before '
        'exporting a trained model: layers at whole strides then export as a plain Conv']
    assert [name for name, _ in onnx_branch] == ['ls_conv2d_by_sampling',
                                                 'ls_conv2d_at_integer_stride']

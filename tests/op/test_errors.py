"""Bad input raises a clear error that names the argument, on both implementations."""
import warnings

import pytest
import torch

from mmlstride.ops import ls_conv2d
from mmlstride.ops import ls_conv2d_function


def good_args(**changes):
    args = dict(input=torch.randn(2, 4, 8, 8), weight=torch.randn(6, 2, 3, 3),
                stride=torch.tensor([1.5, 2.0]), bias=torch.randn(6), padding=1, dilation=1,
                groups=2)
    args.update(changes)
    return args


BAD_INPUTS = [
    (dict(input=torch.randn(4, 8, 8)), ValueError, 'input.dim()=3 expected 4'),
    (dict(weight=torch.randn(6, 2, 3)), ValueError, 'weight.dim()=3 expected 4'),
    (dict(weight=torch.randn(6, 4, 3, 3)), ValueError, 'weight.shape[1]=4 expected'),
    (dict(groups=3), ValueError, 'groups=3 expected to divide'),
    (dict(groups=0), ValueError, 'groups=0 expected'),
    (dict(weight=torch.randn(5, 2, 3, 3)), ValueError, 'groups=2 expected to divide'),
    (dict(bias=torch.randn(5)), ValueError, 'bias.shape=(5,) expected (6,)'),
    (dict(stride=torch.tensor([1.5, 2.0, 1.0])), ValueError, 'stride.shape=(3,) expected (2,)'),
    (dict(stride=torch.tensor([0.0, 2.0])), ValueError, 'stride=(0.0, 2.0) expected finite'),
    (dict(stride=torch.tensor([1.0, -2.0])), ValueError, 'expected finite values > 0'),
    (dict(stride=torch.tensor([float('nan'), 2.0])), ValueError, 'expected finite values > 0'),
    (dict(stride=torch.tensor([float('inf'), 2.0])), ValueError, 'expected finite values > 0'),
    (dict(weight=torch.randn(6, 2, 11, 3)), ValueError, 'kernel extent along h=11'),
    (dict(dilation=(1, 6)), ValueError, 'kernel extent along w=13'),
    (dict(padding=-1), ValueError, 'padding=-1 expected'),
    (dict(dilation=0), ValueError, 'dilation=0 expected'),
    (dict(padding=(1, 2, 3)), ValueError, 'padding=(1, 2, 3) expected'),
    (dict(output_size=(0, 4)), ValueError, 'output_size=(0, 4) expected'),
    (dict(input=torch.randn(2, 4, 8, 8).double()), TypeError, 'weight.dtype=torch.float32 expected'
     ' torch.float64'),
    (dict(stride=torch.tensor([1, 2])), TypeError,
     'stride.dtype=torch.int64 expected a floating-point dtype'),
    (dict(bias=torch.randn(6).double()), TypeError, 'bias.dtype=torch.float64'),
    (dict(input=torch.ones(2, 4, 8, 8, dtype=torch.int64)), TypeError,
     'input.dtype=torch.int64 expected torch.float32 or torch.float64'),
    (dict(input=torch.randn(2, 4, 8, 8).half(), weight=torch.randn(6, 2, 3, 3).half(),
          bias=torch.randn(6).half()), TypeError,
     'input.dtype=torch.float16 expected torch.float32 or torch.float64 on cpu'),
    (dict(weight=torch.randn(6, 2, 3, 3, device='meta')), ValueError,
     'weight.device=meta expected cpu'),
    (dict(input=[[1.0]]), TypeError, 'input is a list, expected a torch.Tensor'),
    (dict(phase=torch.tensor([0.5, 0.5, 0.5])), ValueError, 'phase.shape=(3,) expected (2,)'),
    (dict(phase=torch.tensor([1, 2])), TypeError,
     'phase.dtype=torch.int64 expected a floating-point dtype'),
    (dict(phase=torch.zeros(2, device='meta')), ValueError, 'phase.device=meta expected cpu'),
]


@pytest.mark.parametrize('changes,error,message', BAD_INPUTS)
def test_python_api_names_the_argument(changes, error, message):
    """Checked in Python before the op is chosen, so the same for both implementations."""
    with pytest.raises(error) as info:
        ls_conv2d(**good_args(**changes))
    assert message in str(info.value)


BAD_STRIDE_VALUES = [(0.0, 2.0), (1.0, -2.0), (float('nan'), 2.0), (1.5, float('inf'))]


@pytest.mark.parametrize('values', BAD_STRIDE_VALUES, ids=str)
def test_stride_values_checked_by_the_pure_pytorch_fallback(values, monkeypatch):
    """With output_size given nothing reads the stride before dispatch: without kernels,
    the fallback checks the values itself."""
    used = []
    monkeypatch.setattr(ls_conv2d_function, 'has_kernel', lambda device: False)
    monkeypatch.setattr(ls_conv2d_function, 'ls_conv2d_reference',
                        lambda *args: used.append(args) or torch.zeros(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r'stride=\(.*\) expected finite values > 0'):
        ls_conv2d(**good_args(stride=torch.tensor(values)), output_size=(4, 4))
    assert not used
    ls_conv2d(**good_args(), output_size=(4, 4))
    assert len(used) == 1  # good values reach the pure-PyTorch implementation


@pytest.mark.parametrize('values', BAD_STRIDE_VALUES, ids=str)
def test_stride_values_checked_by_the_compiled_op(values):
    """The CPU kernels read the stride and raise ValueError, as the Python layer does (CUDA
    checks it on the device: tests/cuda/test_cuda_kernels_emulated.py)."""
    with pytest.raises(ValueError, match='expected finite values > 0'):
        ls_conv2d(**good_args(stride=torch.tensor(values)), output_size=(4, 4))


BAD_PHASE_VALUES = [(float('nan'), 0.0), (0.0, -float('inf'))]


@pytest.mark.parametrize('values', BAD_PHASE_VALUES, ids=str)
def test_phase_values_checked_where_read(values, monkeypatch):
    """The phase's values are read by the compiled op (CUDA: on the device) or the
    pure-PyTorch fallback, not before (no host sync): both raise ValueError."""
    phase = torch.tensor(values)
    with pytest.raises(ValueError, match=r'phase=\(.*\) expected finite values'):
        ls_conv2d(**good_args(phase=phase))
    monkeypatch.setattr(ls_conv2d_function, 'has_kernel', lambda device: False)
    with pytest.raises(ValueError, match=r'phase=\(.*\) expected finite values'):
        ls_conv2d(**good_args(phase=phase))


@pytest.mark.parametrize('changes,error,message', [
    (dict(input=torch.randn(4, 8, 8)), ValueError, 'input.dim()=3 expected 4'),
    (dict(weight=torch.randn(6, 4, 3, 3)), ValueError, 'weight.size(1)=4 expected'),
    (dict(groups=3), ValueError, 'expected a multiple of groups=3'),
    (dict(stride=torch.tensor([0.0, 2.0])), ValueError,
     'stride=(0, 2) expected finite values > 0'),
    (dict(stride=torch.tensor([1.0, 2.0, 3.0])), ValueError, 'stride.shape=[3] expected [2]'),
    (dict(input=torch.randn(2, 4, 8, 8).double()), TypeError,
     'weight.dtype=Float expected Double'),
    (dict(input=torch.ones(2, 4, 8, 8, dtype=torch.int32)), TypeError,
     'input.dtype=Int expected float32'),
    (dict(input=torch.randn(2, 4, 8, 8).bfloat16(), weight=torch.randn(6, 2, 3, 3).bfloat16(),
          bias=torch.randn(6).bfloat16()), TypeError,
     'input.dtype=BFloat16 expected float32 or float64 on cpu'),
    (dict(stride=torch.tensor([1, 2])), TypeError,
     'stride.dtype=Long expected a floating-point dtype'),
    (dict(weight=torch.randn(6, 2, 11, 3)), ValueError, 'kernel extent=11 along h'),
    (dict(bias=torch.randn(5)), ValueError, 'bias.shape=[5] expected [6]'),
    (dict(phase=torch.tensor([0.5, 0.5, 0.5])), ValueError, 'phase.shape=[3] expected [2]'),
    (dict(phase=torch.tensor([1, 2])), TypeError,
     'phase.dtype=Long expected a floating-point dtype'),
    (dict(phase=torch.tensor([float('nan'), 0.0])), ValueError,
     'phase=(nan, 0) expected finite values'),
    (dict(phase=torch.tensor([0.0, float('inf')])), ValueError, 'expected finite values'),
])
def test_compiled_op_names_the_argument(changes, error, message):
    """The C++ checks raise the Python layer's error types: ValueError for bad values and
    shapes, TypeError for bad dtypes."""
    args = good_args(**changes)
    with pytest.raises(error) as info:
        torch.ops.mmlstride.ls_conv2d(args['input'], args['weight'], args['stride'], args['bias'],
                                      (1, 1), (1, 1), args['groups'], (4, 4), args.get('phase'))
    assert message in str(info.value)


@pytest.mark.parametrize('changes,message', [
    (dict(input=(2, 4, 8)), 'input.dim()=3 expected 4'),
    (dict(weight=(6, 2, 3)), 'weight.dim()=3 expected 4'),
    (dict(weight=(6, 4, 3, 3)), 'weight.shape[1]=4 expected input channels / groups'),
    (dict(stride=(3, )), 'stride.shape=(3,) expected (2,)'),
    (dict(phase=(3, )), 'phase.shape=(3,) expected (2,)'),
    (dict(bias=(5, )), 'bias.shape=(5,) expected (6,)'),
])
def test_fake_kernel_names_the_bad_shape(changes, message):
    """The shape function (meta tensors, as torch.compile and torch.export trace) checks every
    tensor's shape, with the name of the argument."""
    good = dict(input=(2, 4, 8, 8), weight=(6, 2, 3, 3), stride=(2, ), bias=(6, ), phase=(2, ))

    def on_meta(shapes):
        t = {name: torch.empty(shape, device='meta') for name, shape in shapes.items()}
        return torch.ops.mmlstride.ls_conv2d(t['input'], t['weight'], t['stride'], t['bias'],
                                             (1, 1), (1, 1), 2, (4, 5), t['phase'])

    assert on_meta(good).shape == (2, 6, 4, 5)
    with pytest.raises(RuntimeError) as info:
        on_meta({**good, **changes})
    assert message in str(info.value)


def test_backward_op_checks_grad_output():
    args = good_args()
    with pytest.raises(ValueError, match=r'grad_output.shape=\[2, 5, 4, 4\] expected \[2, 6'):
        torch.ops.mmlstride.ls_conv2d_backward(torch.randn(2, 5, 4, 4), args['input'],
                                               args['weight'], args['stride'], None, (1, 1),
                                               (1, 1), 2, [True] * 4 + [False])


def test_backward_op_needs_a_phase_for_its_gradient():
    args = good_args()
    with pytest.raises(ValueError, match=r'output_mask\[4\]=true .* expected a phase'):
        torch.ops.mmlstride.ls_conv2d_backward(torch.randn(2, 6, 4, 4), args['input'],
                                               args['weight'], args['stride'], None, (1, 1),
                                               (1, 1), 2, [True] * 5)


def test_fallback_warns_once(monkeypatch):
    """Without kernels for a device, LSConv warns once and uses the pure-PyTorch implementation."""
    from mmlstride.ops import extension
    monkeypatch.setattr(extension, '_warned', False)
    device = torch.device('xpu')  # no mmlstride kernels registered for it
    with pytest.warns(UserWarning, match='no xpu kernels; LSConv falls back'):
        assert not extension.has_kernel(device)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not extension.has_kernel(device)
    assert extension.has_kernel(torch.device('cpu'))


def test_dtype_messages_name_every_accepted_dtype():
    """The input's dtype error lists the dtypes of its device in full: on the CPU float32 and
    float64 (and where the half types run), elsewhere (here a meta tensor) all four."""
    from mmlstride.ops.arguments import check_arguments
    with pytest.raises(TypeError) as error:
        ls_conv2d(**good_args(input=torch.ones(2, 4, 8, 8, dtype=torch.int64)))
    assert str(error.value) == ('input.dtype=torch.int64 expected torch.float32 or torch.float64 '
                                'on cpu (float16 and bfloat16 run on CUDA)')
    meta = dict(device='meta')
    with pytest.raises(TypeError) as error:
        check_arguments(torch.ones(2, 4, 8, 8, dtype=torch.int64, **meta),
                        torch.ones(6, 2, 3, 3, **meta), torch.ones(2, **meta), None, (1, 1),
                        (1, 1), 2)
    assert str(error.value) == ('input.dtype=torch.int64 expected torch.float32, torch.float64, '
                                'torch.float16 or torch.bfloat16')


def test_shape_messages_in_full():
    """The weight's rank and channel errors say what is expected, in whole numbers."""
    with pytest.raises(ValueError) as error:
        ls_conv2d(**good_args(weight=torch.randn(6, 2, 3)))
    assert str(error.value) == ('weight.dim()=3 expected 4 '
                                '(out_channels, in_channels / groups, kernel_h, kernel_w)')
    with pytest.raises(ValueError) as error:
        ls_conv2d(**good_args(weight=torch.randn(6, 4, 3, 3)))
    assert str(error.value) == 'weight.shape[1]=4 expected input channels / groups = 2'


def test_tensor_argument_messages_in_full():
    """A tensor argument that is not a tensor, or on another device than the input, is named
    with what it is and what is expected."""
    with pytest.raises(TypeError) as error:
        ls_conv2d(**good_args(bias=[0.0] * 6))
    assert str(error.value) == 'bias is a list, expected a torch.Tensor'
    with pytest.raises(ValueError) as error:
        ls_conv2d(**good_args(bias=torch.randn(6, device='meta')))
    assert str(error.value) == 'bias.device=meta expected cpu (the device of input)'


def test_pair_forms_and_messages():
    """pair takes a number, a pair or a one-element list; a tensor only when asked; and its
    errors say what was expected, with the bound."""
    from mmlstride.ops.arguments import pair
    assert pair([3], 'padding', integer=True, minimum=0) == (3, 3)
    assert pair(torch.tensor([2.0, 0.5]), 'stride', tensor=True) == (2.0, 0.5)
    with pytest.raises(ValueError, match=r'^padding=tensor\(\[1, 2\]\) expected an int or a pair'):
        pair(torch.tensor([1, 2]), 'padding', integer=True)
    with pytest.raises(ValueError) as error:
        pair(-1, 'padding', integer=True, minimum=0)
    assert str(error.value) == 'padding=-1 expected an int >= 0 or a pair of ints >= 0'
    with pytest.raises(ValueError) as error:
        pair('a', 'phase')
    assert str(error.value) == "phase='a' expected a finite number or a pair of them"
    with pytest.raises(ValueError) as error:
        pair(0.0, 'stride', minimum=0.5)
    assert str(error.value) == 'stride=0.0 expected a finite number >= 0.5 or a pair of them'


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_numbers_become_tensors_of_the_inputs_precision_and_device(dtype):
    """A stride or phase given as numbers becomes a float64 tensor for float64 input, else
    float32, on the input's device."""
    from mmlstride.ops.ls_conv2d_function import _as_tensor
    for device in ('cpu', 'meta'):
        made = _as_tensor((1.1, 2.0), torch.ones(1, dtype=dtype, device=device))
        assert made.dtype == dtype and made.device.type == device


def test_pair_passes_symbolic_sizes_through():
    """A symbolic int (a size under torch.export) is taken as it is, on either side of a
    pair, without reading its value."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from mmlstride.ops.arguments import pair
    if not hasattr(ShapeEnv, 'create_unbacked_symint'):
        pytest.skip('this torch makes no symbolic ints outside a trace')
    size = ShapeEnv().create_unbacked_symint()
    found = pair((size, 3), 'output_size', integer=True, minimum=1)
    assert len(found) == 2 and found[0] is size and found[1] == 3
    found = pair((4, size), 'output_size', integer=True, minimum=1)
    assert found[0] == 4 and found[1] is size

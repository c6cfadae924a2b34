"""The export forms of LSConv (mmlstride/ops/ls_conv2d_export.py) called directly, without any
export: the helpers' exact results (``_split``'s paddings, ``_pad_or_crop``'s rows and the pad
steps a tracer records of it), and both forms in float64 against the dense definition
(``mmlstride.testing.ls_conv2d_by_interpolation``) on small hand-picked geometries."""
import itertools
import warnings

import pytest
import torch
import torch.fx

from mmlstride.ops.ls_conv2d_export import (_pad_or_crop, _split, ls_conv2d_at_integer_stride,
                                            ls_conv2d_by_sampling)
from mmlstride.testing import ls_conv2d_by_interpolation, relative_error

F64 = dict(dtype=torch.float64)


def numbered(*shape) -> torch.Tensor:
    """A float64 tensor holding 1, 2, 3, ... (no zeros, so a moved or lost pixel shows)."""
    count = 1
    for n in shape:
        count *= n
    return torch.arange(1, count + 1, **F64).reshape(shape)


def placed(x: torch.Tensor, rows, columns) -> torch.Tensor:
    """``x`` with rows[0] rows added before it and rows[1] after it (negative: removed), and
    likewise columns, pixel by pixel: pixel (i, j) of the result is x's (i - rows[0],
    j - columns[0]) where that exists, else 0."""
    height, width = x.shape[2:]
    out = x.new_zeros(*x.shape[:2], height + sum(rows), width + sum(columns))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            source_i, source_j = i - rows[0], j - columns[0]
            if 0 <= source_i < height and 0 <= source_j < width:
                out[:, :, i, j] = x[:, :, source_i, source_j]
    return out


def pad_steps(graph_module: torch.fx.GraphModule) -> list:
    """The amounts of the pads a tracer recorded, in order."""
    return [node.args[1] for node in graph_module.graph.nodes
            if node.op == 'call_function' and node.target is torch.nn.functional.pad]


# _split -------------------------------------------------------------------------------------

# (begin, end, step, most) -> (padding, before, after), worked out from _split's docstring.
SPLITS = [
    ((2, 3, 1, None), (2, 0, 1)),  # both sides padded by the operator as far as they share
    ((3, 2, 1, None), (2, 1, 0)),
    ((0, 4, 1, None), (0, 0, 4)),  # nothing before: the operator pads nothing
    ((-2, 4, 1, None), (0, -2, 4)),  # a crop before
    ((2, -3, 1, None), (0, 2, -3)),  # a crop after
    ((2, 0, 2, None), (1, 1, 0)),  # one row over at the end, which the stride-2 floor drops
    ((3, 1, 3, None), (3, 0, 0)),  # two rows over, below the step 3
    ((3, 0, 3, None), (2, 1, 0)),  # at most step - 1 rows over
    ((2, -1, 2, None), (0, 2, 0)),  # a row to crop, under the step: left to the floor
    ((2, -2, 2, None), (0, 2, -2)),  # a whole step to crop: cropped
    ((3, 3, 1, 1), (1, 2, 2)),  # a pool pads at most half its window
    ((1, 5, 2, 1), (1, 0, 4)),
    ((4, 4, 2, 0), (0, 4, 4)),
]


@pytest.mark.parametrize('arguments, expected', SPLITS, ids=str)
def test_split_exact(arguments, expected):
    """_split gives the operator the most zero padding it can take (no more than the rows
    needed before, the rows after plus the step's slack, and ``most``), leaves the rest before
    and after to pad or crop by hand, and leaves fewer than ``step`` rows over at the end."""
    begin, end, step, most = arguments
    assert _split(begin, end, step, most) == expected


@pytest.mark.parametrize('step', [1, 2, 3])
def test_split_reads_the_rows_asked_for(step):
    """For rows (begin, end) that a reader of window 2 and stride ``step`` reads exactly to the
    last, padding or cropping (before, after) by hand and then letting the reader pad
    ``padding`` on both sides reads the same outputs as padding (begin, end) by hand."""
    x = numbered(1, 1, 7, 1)
    window = torch.ones(1, 1, 2, 1, **F64)
    for begin, end in itertools.product(range(-2, 4), range(-2, 4)):
        if (7 + begin + end - 2) % step:
            continue
        padding, before, after = _split(begin, end, step)
        assert padding >= 0
        expected = torch.nn.functional.conv2d(placed(x, (begin, end), (0, 0)), window,
                                              stride=(step, 1))
        found = torch.nn.functional.conv2d(placed(x, (before, after), (0, 0)), window,
                                           stride=(step, 1), padding=(padding, 0))
        assert torch.equal(found, expected), (begin, end)


def test_split_leaves_a_symbolic_end_to_pad_by_hand():
    """An end that is not a plain int (a size symbolic under export) is all padded by hand
    and the operator pads nothing."""
    end = object()
    assert _split(2, end, 1) == (0, 2, end)
    assert _split(-1, end, 3, most=1) == (0, -1, end)


# _pad_or_crop -------------------------------------------------------------------------------

@pytest.mark.parametrize('rows', list(itertools.product(range(-1, 3), repeat=2)), ids=str)
def test_pad_or_crop_values(rows):
    """_pad_or_crop adds zero rows and columns before and after where positive and removes
    them where negative, every combination of signs, each side on its own."""
    x = numbered(2, 1, 3, 4)
    for columns in itertools.product(range(-1, 3), repeat=2):
        found = _pad_or_crop(x, rows, columns)
        assert torch.equal(found, placed(x, rows, columns)), columns


@pytest.mark.parametrize('rows, columns', [((2, -3), (0, 0)), ((-3, 2), (0, 0)),
                                           ((0, 0), (3, -4)), ((-2, 3), (-1, 2))], ids=str)
def test_pad_or_crop_never_crops_more_than_there_is(rows, columns):
    """A crop larger than the input, made up for by a pad on the other side, gives the rows
    of the whole move (padding comes before cropping), here only zeros or a few pixels."""
    x = numbered(1, 2, 2, 2)
    assert torch.equal(_pad_or_crop(x, rows, columns), placed(x, rows, columns))


def test_pad_or_crop_nothing_to_do_is_the_input():
    """No rows and no columns to move: the input itself, no copy (no op in an export)."""
    x = numbered(1, 1, 2, 3)
    assert _pad_or_crop(x, (0, 0), (0, 0)) is x


# (rows, columns) -> the pads a tracer records: one pad where every amount is known and none is
# negative, none where there is nothing to do; else a pad of the positive begins, one of the
# ends and one of the negative begins, each only where it moves something.
TRACED_STEPS = [
    ((0, 0), (0, 0), []),
    ((1, 1), (0, 2), [(0, 2, 1, 1)]),
    ((0, 3), (0, 0), [(0, 0, 0, 3)]),
    ((2, 0), (1, 0), [(1, 0, 2, 0)]),
    ((0, -1), (0, 0), [(0, 0, 0, -1)]),
    ((-1, 0), (0, 0), [(0, 0, -1, 0)]),
    ((0, 0), (-1, 2), [(0, 2, 0, 0), (-1, 0, 0, 0)]),
    ((1, 0), (-1, 0), [(0, 0, 1, 0), (-1, 0, 0, 0)]),
    ((1, -2), (-1, 1), [(0, 0, 1, 0), (0, 1, 0, -2), (-1, 0, 0, 0)]),
]


@pytest.mark.parametrize('rows, columns, steps', TRACED_STEPS, ids=str)
def test_pad_or_crop_traces_only_the_pads_needed(rows, columns, steps):
    """Traced (as for export), _pad_or_crop records one pad when every amount is known and
    none negative, nothing when nothing moves, and otherwise no pad that moves nothing; the
    traced graph computes the same rows."""
    traced = torch.fx.symbolic_trace(lambda x: _pad_or_crop(x, rows, columns))
    assert pad_steps(traced) == steps
    x = numbered(1, 2, 4, 3)
    assert torch.equal(traced(x), placed(x, rows, columns))


class SymbolicEnds(torch.nn.Module):
    """Pads or crops to a fixed size whatever the input's: ends that depend on the traced
    input's size, symbolic to the tracer."""

    def __init__(self, rows, columns, symbolic_rows=True, symbolic_columns=True):
        super().__init__()
        self.rows, self.columns = rows, columns  # (begin, size of the result)
        self.symbolic = symbolic_rows, symbolic_columns

    def ends(self, x, k):
        """The end that gives ``size``: symbolic in x's size when asked, else for 4 x 4."""
        begin, size = (self.rows, self.columns)[k]
        height = x.shape[2 + k] if self.symbolic[k] else 4
        return begin, size - begin - height

    def forward(self, x):
        return _pad_or_crop(x, self.ends(x, 0), self.ends(x, 1))


@pytest.mark.parametrize('symbolic', [(True, True), (True, False), (False, True)], ids=str)
@pytest.mark.parametrize('rows, columns', [((1, 3), (0, 5)), ((-1, 2), (2, 6)),
                                           ((0, 4), (1, 1))], ids=str)
def test_pad_or_crop_traces_symbolic_ends(rows, columns, symbolic):
    """Ends symbolic to a tracer (sizes under export with dynamic shapes) are never branched
    on, one axis's or both: the ends are always padded as one step, and the traced graph gives
    every input size the rows asked for."""
    module = SymbolicEnds(rows, columns, *symbolic)
    traced = torch.fx.symbolic_trace(module)
    for size in ([4, 4], [2, 4], [4, 7], [6, 3]):
        size = [size[k] if symbolic[k] else 4 for k in range(2)]
        x = numbered(1, 1, *size)
        ends = [module.ends(x, k) for k in range(2)]
        found = traced(x)
        assert found.shape[2:] == (rows[1], columns[1])
        assert torch.equal(found, placed(x, *ends)), size


# The two forms --------------------------------------------------------------------------------

def form_tensors(seed, channels, out_channels, groups, kernel, size, batch=2, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *size, generator=gen, **F64)
    w = torch.randn(out_channels, channels // groups, *kernel, generator=gen, **F64)
    b = torch.randn(out_channels, generator=gen, **F64) if bias else None
    return x, w, b


# (channels, out_channels, groups, kernel, size, stride, padding, dilation, output_size, phase)
SAMPLING_CASES = [
    (2, 3, 1, (3, 3), (5, 7), (1.5, 0.75), (1, 1), (1, 1), (4, 9), None),
    (4, 2, 2, (2, 3), (6, 4), (1.3247179572, 2.2360679775), (0, 2), (2, 1), (3, 2),
     (0.35, -0.6)),
    (3, 6, 3, (1, 2), (1, 1), (0.7071067812, 1.7320508076), (0, 1), (1, 2), (2, 3),
     (-0.25, 0.5)),  # one pixel: the border rule at both edges
    (1, 1, 1, (3, 1), (4, 1), (2.0, 1.0), (2, 0), (1, 1), (4, 2), (1.0, -1.5)),
    (2, 2, 1, (1, 1), (3, 5), (0.6180339887, 3.1415926536), (0, 0), (1, 1), (5, 2), None),
]


@pytest.mark.parametrize('case', SAMPLING_CASES, ids=range(len(SAMPLING_CASES)))
def test_sampling_form_is_the_definition(case):
    """ls_conv2d_by_sampling equals the dense definition in float64: rectangular kernels,
    inputs and outputs (rows not mixed with columns), groups, dilation, padding, a phase, a
    one-pixel input, bias or not, a batch of two (one grid for every image)."""
    channels, out_channels, groups, kernel, size, stride, padding, dilation, output_size, \
        phase = case
    for bias in (True, False):
        x, w, b = form_tensors(len(size), channels, out_channels, groups, kernel, size,
                               bias=bias)
        x = torch.cat([x, 2 * x.flip(0)])  # images that differ
        stride_t = torch.tensor(stride, **F64)
        phase_t = None if phase is None else torch.tensor(phase, **F64)
        args = (x, w, stride_t, b, padding, dilation, groups, output_size, phase_t)
        found = ls_conv2d_by_sampling(*args)
        expected = ls_conv2d_by_interpolation(*args)
        assert found.shape == expected.shape == (4, out_channels, *output_size)
        assert relative_error(found, expected) < 1e-12


def test_sampling_form_phase_in_float32_stride():
    """A float64 phase with a float32 stride is taken in the stride's dtype, and float32 input
    is sampled in float32."""
    x, w, b = form_tensors(0, 2, 2, 1, (2, 2), (5, 6))
    stride = torch.tensor([1.5, 1.25])
    phase = torch.tensor([0.5, -0.25], **F64)
    found = ls_conv2d_by_sampling(x.float(), w.float(), stride, b.float(), (1, 0), (1, 1), 1,
                                  (3, 4), phase)
    expected = ls_conv2d_by_interpolation(x, w, stride.double(), b, (1, 0), (1, 1), 1, (3, 4),
                                          phase)
    assert found.dtype == torch.float32
    assert relative_error(found, expected) < 1e-5


# (kernel, stride, padding, dilation, groups, size, output_size, phase): whole strides,
# fractions 0, 1/2 and others, blends strided (s divides d, or a 1-tap axis) and not.
INTEGER_CASES = [
    ((3, 3), (2, 2), (1, 1), (1, 1), 1, (7, 8), None, (0.0, 0.0)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 1, (7, 8), (5, 3), (0.0, 0.0)),
    ((3, 2), (1, 3), (0, 2), (2, 1), 2, (6, 9), None, (-1.0, 2.0)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 2, (7, 6), None, (0.5, 0.5)),
    ((3, 3), (2, 2), (1, 1), (1, 1), 1, (7, 6), (4, 4), (0.5, 0.5)),
    ((1, 1), (2, 2), (0, 0), (1, 1), 1, (6, 7), None, (0.5, 0.5)),  # the half-pixel shortcut
    ((1, 1), (2, 3), (0, 0), (1, 1), 1, (6, 7), (3, 3), (1.5, -0.5)),
    ((2, 3), (2, 1), (1, 2), (2, 3), 1, (8, 9), None, (0.25, 0.0)),  # s divides d
    ((2, 3), (2, 1), (1, 2), (2, 3), 2, (8, 9), (5, 4), (-0.75, 1.5)),
    ((3, 2), (3, 2), (2, 0), (1, 1), 1, (9, 5), None, (0.0, 0.3)),
    ((3, 2), (3, 2), (2, 0), (1, 1), 1, (9, 5), (2, 6), (-1.6, 0.3)),
    ((2, 2), (1, 1), (0, 1), (1, 1), 1, (3, 4), (5, 2), (0.5, 0.0)),
    ((1, 3), (3, 1), (0, 1), (1, 2), 2, (10, 6), (4, 3), (2.25, 0.5)),
]


@pytest.mark.parametrize('case', INTEGER_CASES, ids=range(len(INTEGER_CASES)))
def test_integer_stride_form_is_the_definition(case):
    """ls_conv2d_at_integer_stride equals the dense definition in float64, with the
    convolution's own output size or a given one (padding or cropping the input), whole and
    fractional phases on either axis, blends strided or at every pixel, groups and bias."""
    kernel, stride, padding, dilation, groups, size, output_size, phase = case
    for bias in (True, False):
        x, w, b = form_tensors(sum(size), 2 * groups, 2 * groups, groups, kernel, size,
                               bias=bias)
        found = ls_conv2d_at_integer_stride(x, w, stride, b, padding, dilation, groups,
                                            output_size, phase)
        own = tuple((size[k] + 2 * padding[k] - dilation[k] * (kernel[k] - 1) - 1) // stride[k]
                    + 1 for k in range(2))
        assert found.shape[2:] == (own if output_size is None else output_size)
        expected = ls_conv2d_by_interpolation(x, w, torch.tensor(stride, **F64), b, padding,
                                              dilation, groups, found.shape[2:],
                                              torch.tensor(phase, **F64))
        assert relative_error(found, expected) < 1e-12


def test_sampling_form_samples_in_the_input_dtype_whatever_the_stride_dtype():
    """A float64 stride tensor with float32 input (a stride of any floating dtype is accepted)
    samples in float32: the grid is cast to the input's dtype."""
    x, w, b = form_tensors(1, 2, 2, 1, (3, 3), (6, 5))
    stride = torch.tensor([1.5, 0.75], **F64)
    found = ls_conv2d_by_sampling(x.float(), w.float(), stride, b.float(), (1, 1), (1, 1), 1,
                                  (4, 6))
    expected = ls_conv2d_by_interpolation(x, w, stride, b, (1, 1), (1, 1), 1, (4, 6))
    assert found.dtype == torch.float32
    assert relative_error(found, expected) < 1e-5


def test_sampling_form_warns_nothing():
    """The sampling form states every GridSample setting it relies on (no warning about a
    default, e.g. align_corners)."""
    x, w, b = form_tensors(2, 2, 2, 1, (3, 3), (6, 5))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ls_conv2d_by_sampling(x, w, torch.tensor([1.5, 0.75], **F64), b, (1, 1), (1, 1), 1,
                              (4, 6), torch.tensor([0.25, 0.5], **F64))


def test_both_forms_run_on_the_meta_device():
    """Every tensor the forms make is made on the input's device: on the meta device (as
    shape propagation runs them) both forms give the output's shape, a blend with a fraction
    other than 1/2 (a depthwise kernel the form builds) included."""
    meta = dict(device='meta', **F64)
    x, w, b = (torch.empty(2, 4, 7, 8, **meta), torch.empty(6, 2, 3, 3, **meta),
               torch.empty(6, **meta))
    out = ls_conv2d_by_sampling(x, w, torch.empty(2, **meta), b, (1, 1), (1, 1), 2, (5, 3),
                                torch.empty(2, **meta))
    assert out.device.type == 'meta' and out.shape == (2, 6, 5, 3)
    for phase in ((0.25, 0.5), (0.0, 0.0)):
        out = ls_conv2d_at_integer_stride(x, w, (2, 2), b, (1, 1), (1, 1), 2, (4, 4), phase)
        assert out.device.type == 'meta' and out.shape == (2, 6, 4, 4)


def traced_operators(kernel, stride, padding, dilation, phase, size):
    """The operators (name, then the arguments that set their geometry) of the whole-stride
    form at the convolution's own output size, as traced for export."""
    from torch.fx.experimental.proxy_tensor import make_fx
    x, w = torch.randn(1, 2, *size), torch.randn(3, 2, *kernel)
    output_size = tuple((size[k] + 2 * padding[k] - dilation[k] * (kernel[k] - 1) - 1) //
                        stride[k] + 1 for k in range(2))
    graph = make_fx(lambda x, w: ls_conv2d_at_integer_stride(
        x, w, stride, None, padding, dilation, 1, output_size, phase))(x, w).graph
    found = []
    for node in graph.nodes:
        if node.op != 'call_function':
            continue
        name, args = str(node.target).split('.')[1], node.args
        if name == 'convolution':
            found.append((name, tuple(args[3]), tuple(args[4])))
        elif name == 'avg_pool2d':  # padding left out when 0
            found.append((name, tuple(args[1]), tuple(args[2]),
                          tuple(args[3]) if len(args) > 3 else (0, 0)))
        else:
            found.append((name, tuple(args[1])))
    return found


# (kernel, stride, padding, dilation, phase, size) -> the form's operators, each with its
# geometry: convolution (stride, padding); avg_pool2d (window, stride, padding);
# constant_pad_nd (amounts).
FORM_GRAPHS = [
    # a whole phase: the plain strided convolution, its padding in the convolution
    (((3, 3), (2, 2), (1, 1), (1, 1), (0.0, 0.0), (8, 8)),
     [('convolution', (2, 2), (1, 1))]),
    # ResNet's strided 3 x 3 at a half phase: a 2 x 2 average at every pixel, then the
    # strided convolution; the one padding row before is the pool's
    (((3, 3), (2, 2), (1, 1), (1, 1), (0.5, 0.5), (8, 8)),
     [('avg_pool2d', (2, 2), (1, 1), (1, 1)), ('convolution', (2, 2), (0, 0))]),
    # ResNet's 1 x 1 shortcut at a half phase: the average only where it is read, at stride 2
    (((1, 1), (2, 2), (0, 0), (1, 1), (0.5, 0.5), (8, 8)),
     [('avg_pool2d', (2, 2), (2, 2), (0, 0)), ('convolution', (1, 1), (0, 0))]),
    # dilation a multiple of the stride: every tap reads one residue, the blend is strided
    (((3, 3), (2, 2), (2, 2), (2, 2), (0.5, 0.5), (8, 8)),
     [('constant_pad_nd', (1, 1, 1, 1)), ('avg_pool2d', (2, 2), (2, 2), (1, 1)),
      ('convolution', (1, 1), (0, 0))]),
    # a half phase on one axis: an average of 2 x 1
    (((3, 3), (2, 2), (1, 1), (1, 1), (0.5, 0.0), (8, 8)),
     [('avg_pool2d', (2, 1), (1, 1), (1, 0)), ('convolution', (2, 2), (0, 1))]),
    # a phase of -1/2: two rows needed before the input, one after; the pool pads one on
    # each side and the convolution the second before
    (((3, 3), (2, 2), (1, 1), (1, 1), (-0.5, -0.5), (9, 9)),
     [('avg_pool2d', (2, 2), (1, 1), (1, 1)), ('convolution', (2, 2), (1, 1))]),
]


@pytest.mark.parametrize('case, operators', FORM_GRAPHS, ids=range(len(FORM_GRAPHS)))
def test_integer_stride_form_is_the_fewest_operators(case, operators):
    """At the sizes of a deployed ResNet's strided layers the whole-stride form is a pool (an
    average pool, never a depthwise convolution, at a half phase; strided where every tap
    reads one residue modulo the stride) and one convolution, with no pad or crop of its own
    where the operators' padding and floor give the rows read."""
    assert traced_operators(*case) == operators

"""mmdet backbones with LSConv: LSResNet's strided blocks, their shortcuts following the main
conv's grid, its default, BlurResNet, and loading plain ResNet weights."""
import pytest
import torch

from conftest import require_module

require_module('mmdet')

from mmlstride.models import LSResNet  # noqa: E402
from mmlstride.ops import LSConv2d  # noqa: E402


def test_follower_samples_the_leader_grid():
    """A 3x3 main conv reduced to its centre tap and a 1x1 shortcut that follows it read the
    input at the same positions for any stride."""
    torch.manual_seed(0)
    main = LSConv2d(4, 4, 3, stride=2, padding=1, bias=False).double()
    shortcut = LSConv2d(4, 4, 1, stride=2, bias=False).double()
    shortcut.follow_stride(main)
    with torch.no_grad():
        main.learnable_stride.copy_(torch.tensor([1.63, 2.41]))
        main.weight.zero_()
        main.weight[:, :, 1, 1] = torch.eye(4)
        shortcut.weight.copy_(torch.eye(4)[:, :, None, None])
    x = torch.randn(2, 4, 17, 19, dtype=torch.float64)
    torch.testing.assert_close(main(x), shortcut(x))
    assert 'learnable_stride' not in dict(shortcut.named_parameters())
    shortcut(x).sum().backward()
    assert main.learnable_stride.grad.abs().sum() > 0


def test_follow_stride_rejects_misaligned_layers():
    main = LSConv2d(4, 4, 3, stride=2, padding=0)
    shortcut = LSConv2d(4, 4, 1, stride=2)
    with pytest.raises(ValueError, match='centre offset'):
        shortcut.follow_stride(main)
    with pytest.raises(ValueError, match='nominal'):
        LSConv2d(4, 4, 1, stride=1).follow_stride(LSConv2d(4, 4, 1, stride=2))


@pytest.mark.parametrize('depth', [18, 50])
def test_ls_resnet_has_one_stride_per_strided_block(depth):
    backbone = LSResNet(depth=depth, base_channels=8, out_indices=(1, 2, 3))
    names = sorted(name for name, _ in backbone.learned_strides())
    conv = 'conv1' if depth == 18 else 'conv2'
    assert names == [f'layer{i}.0.{conv}' for i in (2, 3, 4)]
    with pytest.raises(ValueError, match='ls_stages'):
        LSResNet(depth=18, ls_stages=(True, True))


@pytest.mark.parametrize('learn_phase', [False, True])
@pytest.mark.parametrize('depth', [18, 50])
def test_ls_resnet_shortcuts_follow_their_block_stride(depth, learn_phase):
    """Each strided block's shortcut is an LSConv that follows the block's strided conv, and
    after the stride (and the learned phase) moves both branches sample with it: each equals
    the pure-PyTorch reference at the leader's moved grid (the kernel centres then sit on the
    same grid)."""
    from mmlstride.ops import ls_conv2d_reference
    backbone = LSResNet(depth=depth, base_channels=8, out_indices=(1, 2, 3),
                        stage_conv=dict(type='LSConv', learn_phase=learn_phase)).double()
    strided = 'conv1' if depth == 18 else 'conv2'
    torch.manual_seed(0)
    for index, layer in enumerate(('layer2', 'layer3', 'layer4')):
        block = getattr(backbone, layer)[0]
        leader, shortcut = getattr(block, strided), block.downsample[0]
        assert isinstance(leader, LSConv2d) and leader.stride_leader is None
        assert isinstance(shortcut, LSConv2d) and shortcut.stride_leader is leader
        assert 'learnable_stride' not in dict(shortcut.named_parameters())
        assert 'learnable_phase' not in dict(shortcut.named_parameters())
        moved = torch.tensor([1.63 + 0.1 * index, 2.41 - 0.2 * index], dtype=torch.float64)
        phase = torch.tensor([0.4, -0.7 + 0.1 * index], dtype=torch.float64)
        with torch.no_grad():
            leader.learnable_stride.copy_(moved)
            if learn_phase:
                leader.learnable_phase.copy_(phase)
        for conv in (leader, shortcut):
            x = torch.randn(2, conv.in_channels, 15, 13, dtype=torch.float64)
            expected = ls_conv2d_reference(x, conv.weight, moved, conv.bias, conv.padding,
                                           conv.dilation, conv.groups, (8, 7),
                                           phase if learn_phase else None)
            torch.testing.assert_close(conv(x), expected)
    # Blocks with stride 1 keep identity shortcuts and plain convs.
    assert backbone.layer2[1].downsample is None
    assert not isinstance(getattr(backbone.layer2[1], strided), LSConv2d)


def test_ls_resnet_with_a_fixed_phase():
    """stage_conv=dict(type='LSConv', phase=0.5): every strided conv holds the phase fixed (no
    phase parameter), its shortcut samples on that grid, and the strides still learn."""
    from mmlstride.ops import ls_conv2d_reference
    backbone = LSResNet(depth=18, base_channels=8, out_indices=(1, 2, 3),
                        stage_conv=dict(type='LSConv', phase=0.5), learn_stride=True).double()
    assert not [name for name, _ in backbone.named_parameters() if 'phase' in name]
    assert sorted(name for name in backbone.state_dict() if 'phase' in name) == [
        f'layer{i}.0.conv1.fixed_phase' for i in (2, 3, 4)]
    block = backbone.layer3[0]
    assert block.conv1.fixed_phase.tolist() == [0.5, 0.5]
    assert block.downsample[0].stride_leader is block.conv1
    x = torch.randn(1, block.downsample[0].in_channels, 9, 9, dtype=torch.float64)
    expected = ls_conv2d_reference(x, block.downsample[0].weight, block.conv1.learnable_stride,
                                   block.downsample[0].bias, (0, 0), (1, 1), 1, (5, 5),
                                   torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(block.downsample[0](x), expected)
    features = backbone(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    grads = torch.autograd.grad(sum(f.sum() for f in features),
                                [m.learnable_stride for _, m in backbone.learned_strides()])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
def test_blur_resnet_blurs_where_lsconv_goes_and_loads_resnet_weights(order):
    """BlurResNet: the strided convs of stages 2-4 and their strided shortcuts are BlurConv2d
    (the stem and stride-1 convs unchanged), the parameter names are ResNet's (a ResNet's
    weights load strictly, as the fixed model's initial weights do through load_from), and the
    feature maps have ResNet's sizes."""
    from mmdet.models.backbones import ResNet
    from mmlstride.models import BlurResNet
    from mmlstride.ops import BlurConv2d
    torch.manual_seed(0)
    resnet = ResNet(depth=18, base_channels=8, out_indices=(1, 2, 3))
    backbone = BlurResNet(depth=18, base_channels=8, out_indices=(1, 2, 3), order=order)
    backbone.load_state_dict(resnet.state_dict())
    blurred = sorted(name for name, m in backbone.named_modules() if isinstance(m, BlurConv2d))
    assert blurred == [f'layer{i}.0.{conv}' for i in (2, 3, 4)
                       for conv in ('conv1', 'downsample.0')]
    assert all(m.order == order and m.stride == (2, 2) for name, m in backbone.named_modules()
               if isinstance(m, BlurConv2d))
    x = torch.randn(1, 3, 61, 70)
    backbone.eval()
    resnet.eval()
    with torch.no_grad():
        found, plain = backbone(x), resnet(x)
    assert [f.shape for f in found] == [f.shape for f in plain]
    assert (found[0] - plain[0]).abs().max() > 1e-3  # the blur changes what stage 2 sees


def test_blur_resnet_defaults_and_arguments_as_resnet():
    """By default Zhang's placement (conv then blur) in stages 2-4; the depth may be given by
    position, as to mmdet's ResNet, and ``ls_stages`` chooses the stages."""
    from mmlstride.models import BlurResNet
    from mmlstride.ops import BlurConv2d
    default = BlurResNet(18, base_channels=8)
    blurs = [m for m in default.modules() if isinstance(m, BlurConv2d)]
    assert default.depth == 18 and {(m.order, m.filter_size) for m in blurs} == {('conv-blur', 3)}
    wider = BlurResNet(18, base_channels=8, order='blur-conv', filter_size=5)
    assert {(m.order, m.filter_size) for m in wider.modules() if isinstance(m, BlurConv2d)} == {
        ('blur-conv', 5)}
    chosen = BlurResNet(18, base_channels=8, ls_stages=(False, False, True, False))
    assert sorted(name for name, m in chosen.named_modules() if isinstance(m, BlurConv2d)) == [
        'layer3.0.conv1', 'layer3.0.downsample.0']


def test_ls_resnet_default_is_the_fixed_half_phase_at_frozen_strides():
    """LSResNet's default (the anti-aliasing study's choice): every strided conv samples half a
    pixel in, a fixed phase (no phase parameter), at the nominal stride, frozen; a 2 x 2 box
    average then the plain strided conv. learn_stride=True learns the strides (and a learned
    phase) from there; dict(type='LSConv') gives the corner grid alone."""
    from mmdet.models.backbones import ResNet
    default = LSResNet(depth=18, base_channels=8).double()
    layers = [m for _, m in default.learned_strides()]
    assert len(layers) == 3
    for m in layers:
        assert m.learnable_phase is None and m.fixed_phase.tolist() == [0.5, 0.5]
        assert m.learnable_stride.tolist() == [2.0, 2.0]
        assert not m.learnable_stride.requires_grad
    # A strided conv of the default is the box average, then the plain conv at stride 2.
    conv = default.layer3[0].conv1
    x = torch.randn(2, conv.in_channels, 12, 12, dtype=torch.float64)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), 2, stride=1)
    expected = torch.nn.functional.conv2d(box, conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    plain = ResNet(depth=18, base_channels=8)
    assert set(plain.state_dict()) <= set(default.state_dict())
    learned = LSResNet(depth=18, learn_stride=True,
                       stage_conv=dict(type='LSConv', learn_phase=True))
    assert all(m.learnable_stride.requires_grad and m.learnable_phase.requires_grad
               for _, m in learned.learned_strides())
    corner = LSResNet(depth=18, stage_conv=dict(type='LSConv'))
    assert all(m.learnable_phase is None and m.fixed_phase is None
               for _, m in corner.learned_strides())


def test_all_3x3_and_initial_stride():
    """all_3x3 makes every 3x3 conv of stages 2-4 an LSConv (13 at depth 50, plus the 3
    strided shortcuts); initial_stride moves only the strided ones."""
    backbone = LSResNet(depth=50, base_channels=8, all_3x3=True, initial_stride=1.5,
                        learn_stride=True)
    convs = [m for m in backbone.modules() if isinstance(m, LSConv2d)]
    assert len(convs) == 16
    assert len(LSResNet(depth=50, base_channels=8).learned_strides()) == 3
    assert not any(isinstance(m, LSConv2d) for m in backbone.layer1.modules())
    for layer in (backbone.layer2, backbone.layer3, backbone.layer4):
        for index, block in enumerate(layer):
            assert isinstance(block.conv2, LSConv2d)
            expected = [1.5, 1.5] if index == 0 else [1.0, 1.0]
            assert block.conv2.learnable_stride.tolist() == expected
            assert block.conv2.learnable_stride.requires_grad
            assert not isinstance(block.conv1, LSConv2d) and not isinstance(block.conv3, LSConv2d)


def test_ls_resnet_loads_a_plain_resnet_checkpoint():
    from mmdet.models.backbones import ResNet
    plain = ResNet(depth=18, base_channels=8)
    backbone = LSResNet(depth=18, base_channels=8, initial_stride=3.0)
    with torch.no_grad():
        for _, layer in backbone.learned_strides():
            layer.learnable_stride.fill_(1.7)  # as if trained
    backbone.load_state_dict(plain.state_dict())  # strict: the learned strides are optional
    # A checkpoint without strides (pretrained or shared initial weights) keeps the initial stride.
    assert all(m.learnable_stride.tolist() == [3.0, 3.0] for _, m in backbone.learned_strides())
    for name, value in plain.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name


def test_initial_and_frozen_strides():
    backbone = LSResNet(depth=18, base_channels=8, initial_stride=3.0, learn_stride=False)
    for _, layer in backbone.learned_strides():
        assert layer.learnable_stride.tolist() == [3.0, 3.0]
        assert not layer.learnable_stride.requires_grad


def test_ls_resnet_rejects_bad_stage_counts_and_initial_strides():
    """A wrong number of ls_stages entries and an initial_stride not > 0 raise errors that name
    the argument and what it expected; a positive initial_stride below 1 is accepted."""
    import re
    with pytest.raises(ValueError, match=re.escape(
            'ls_stages=(True, True) expected 4 entries, one per stage')):
        LSResNet(depth=18, base_channels=8, ls_stages=(True, True))
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=re.escape(
                f'initial_stride={bad} expected a value > 0')):
            LSResNet(depth=18, base_channels=8, initial_stride=bad)
    slow = LSResNet(depth=18, base_channels=8, initial_stride=0.5)
    assert all(m.learnable_stride.tolist() == [0.5, 0.5] for _, m in slow.learned_strides())


def test_ls_resnet_rejects_an_average_pooled_shortcut():
    """avg_down=True puts the shortcut's stride in an average pool (its conv has stride 1), which
    cannot follow the strided conv's grid: the error names the stride expected and the conv."""
    import re
    with pytest.raises(ValueError, match=re.escape(
            'the strided shortcut of a block with a replaced strided conv must be a conv with '
            'stride (2, 2) (avg_down=False); got Conv2d(8, 16, kernel_size=(1, 1), '
            'stride=(1, 1), bias=False)')):
        LSResNet(depth=18, base_channels=8, avg_down=True)


def test_ls_resnet_leaves_unstrided_shortcuts_and_other_stage_convs_alone():
    """In a converted stage, a block whose shortcut only changes channels (layer1 of a
    Bottleneck ResNet) keeps its plain convs and shortcut; with a stage_conv that is not LSConv
    or BlurConv (DCN) the strided convs are replaced but the shortcuts are left as they are."""
    from torch import nn
    backbone = LSResNet(depth=50, base_channels=8, ls_stages=(True, True, True, True))
    block = backbone.layer1[0]
    assert type(block.downsample[0]) is nn.Conv2d and block.downsample[0].stride == (1, 1)
    assert not any(isinstance(m, LSConv2d) for m in backbone.layer1.modules())
    assert sorted(name for name, _ in backbone.learned_strides()) == [
        f'layer{i}.0.conv2' for i in (2, 3, 4)]
    from mmcv.ops import DeformConv2dPack
    dcn = LSResNet(depth=18, base_channels=8, stage_conv=dict(type='DCN', deform_groups=1))
    for layer in (dcn.layer2, dcn.layer3, dcn.layer4):
        assert isinstance(layer[0].conv1, DeformConv2dPack) and layer[0].conv1.stride == (2, 2)
        assert type(layer[0].downsample[0]) is nn.Conv2d
    assert not any(isinstance(m, LSConv2d) for m in dcn.modules())


def test_ls_resnet_keeps_dilation_and_groups_of_the_replaced_convs():
    """A strided conv's dilation (a dilated stage) and groups (ResNeXt blocks) carry over to its
    LSConv, whose shortcut still follows it."""
    from mmdet.models.backbones import ResNeXt

    class LSResNeXt(LSResNet, ResNeXt):
        pass

    dilated = LSResNet(depth=18, base_channels=8, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 2))
    conv = dilated.layer4[0].conv1
    assert isinstance(conv, LSConv2d)
    assert (conv.stride, conv.padding, conv.dilation) == ((2, 2), (2, 2), (2, 2))
    assert dilated.layer4[0].downsample[0].stride_leader is conv
    assert dilated.layer3[0].conv1.dilation == (1, 1)
    grouped = LSResNeXt(depth=50, groups=4, base_width=4, base_channels=8)
    for layer in (grouped.layer2, grouped.layer3, grouped.layer4):
        conv = layer[0].conv2
        assert isinstance(conv, LSConv2d) and conv.groups == 4 and conv.stride == (2, 2)
        assert conv.weight.shape[1] == conv.in_channels // 4
        assert layer[0].downsample[0].stride_leader is conv


def test_rebuild_copies_the_whole_geometry_of_a_conv():
    """_rebuild makes a layer of the configured type with the conv's channels, kernel, stride,
    padding, dilation, groups and bias (or no bias)."""
    from torch import nn
    for bias in (True, False):
        conv = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(2, 3), groups=2,
                         bias=bias)
        for cfg, kind in ((dict(type='LSConv'), LSConv2d), (dict(type='Conv2d'), nn.Conv2d)):
            new = LSResNet._rebuild(conv, cfg)
            assert type(new) is kind
            assert (new.in_channels, new.out_channels, new.kernel_size, new.stride, new.padding,
                    new.dilation, new.groups) == (4, 6, (3, 5), (2, 1), (2, 1), (2, 3), 2)
            assert (new.bias is not None) is bias
            assert new.weight.shape == conv.weight.shape


def test_convert_block_skips_layers_that_are_not_convs():
    """_convert_block takes any block: a conv name holding something other than a conv is left
    as it is and the convs after it are still converted, and a block without a downsample
    attribute keeps none; a strided block whose shortcut has no conv is rejected."""
    import re
    from torch import nn
    backbone = LSResNet(depth=18, base_channels=8)
    block = nn.Module()
    block.conv1 = nn.Identity()
    block.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
    block.conv3 = nn.Conv2d(8, 8, 1, bias=False)
    backbone._convert_block(block, all_3x3=False)
    assert isinstance(block.conv1, nn.Identity)
    assert isinstance(block.conv2, LSConv2d) and block.conv2.stride == (2, 2)
    assert type(block.conv3) is nn.Conv2d
    assert not hasattr(block, 'downsample')
    pooled = nn.Module()
    pooled.conv1 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
    pooled.downsample = nn.Sequential(nn.AvgPool2d(2), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=re.escape(
            'must be a conv with stride (2, 2) (avg_down=False); got None')):
        backbone._convert_block(pooled, all_3x3=False)

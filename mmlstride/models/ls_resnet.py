"""``LSResNet``: mmdet's ResNet with learned strides in chosen stages and aligned shortcuts."""
from typing import Optional, Sequence, Tuple

from mmcv.cnn import build_conv_layer
from mmdet.models.backbones import ResNet
from torch import nn

from ..ops import BlurConv2d, LSConv2d

CONV_NAMES = ('conv1', 'conv2', 'conv3')


class LSResNet(ResNet):
    """mmdet's ResNet whose strided convs in the chosen stages are LSConv.

    Every argument of mmdet's ``ResNet`` works as there (depth, styles,
    ``dcn``, ``init_cfg``...), and checkpoints of it load (the learned strides
    start at the nominal stride, the learned phases at
    ``initial_phase``, 0 by default). In each stage with
    ``ls_stages[i]`` True, the strided conv of the main branch becomes
    ``stage_conv`` (default LSConv with its grid held half a pixel in, strides
    frozen: a 2 x 2 box blur before each strided conv), and when it is LSConv
    the block's strided 1x1 shortcut becomes an LSConv that follows the main
    conv's stride (:meth:`LSConv2d.follow_stride`): one learned stride per
    block, both branches on one grid, so the residual sum stays aligned as
    the stride moves.

    Args:
        ls_stages: per stage, whether its strided convs are replaced.
            Default (False, True, True, True): stages 2-4, as DCN is used.
        all_3x3: also replace every 3x3 conv of those stages (their nominal
            stride is 1), like ``stage_with_dcn`` does for DCN.
        stage_conv: config of the replacing layer, built with mmcv's
            ``build_conv_layer``: ``dict(type='LSConv', phase=0.5)`` (default:
            a grid fixed half a pixel in, which with frozen strides is a 2 x 2
            box blur before each strided conv; in the anti-aliasing study
            (projects/lsconv_study) it matched learned strides and BlurPool in
            mAP and shift consistency at 0.4% more multiply-adds, and it exports as a
            plain convolution), ``dict(type='LSConv', learn_phase=True)`` for
            a learned translation, ``dict(type='LSConv')`` for the op's own
            corner grid, or with
            ``stride_bounds`` or ``pivot='centre'`` (shortcuts follow the main
            conv's whole grid), or e.g.
            ``dict(type='DCN', deform_groups=1)`` to compare with deformable
            convs in the same places (then shortcuts are left as they are).
        initial_stride: start the learned stride of the strided convs here
            instead of at the nominal stride (e.g. 3.0 where it is 2); it
            stays there when a checkpoint without strides (a plain ResNet's)
            is loaded.
        learn_stride: whether the strides (and learned phases) train.
            Default False: the grid stays at the initial stride and phase,
            as the study found learning them adds nothing measurable to the
            half-pixel phase (+0.3 mAP, CI -0.1 to +0.8) while a fractional
            stride costs its sampling at inference; True learns them.
    """

    def __init__(self,
                 *args,
                 ls_stages: Sequence[bool] = (False, True, True, True),
                 all_3x3: bool = False,
                 stage_conv: Optional[dict] = None,
                 initial_stride: Optional[float] = None,
                 learn_stride: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if len(ls_stages) != self.num_stages:
            raise ValueError(f'ls_stages={tuple(ls_stages)} expected {self.num_stages} entries, '
                             'one per stage')
        if initial_stride is not None and not initial_stride > 0:
            raise ValueError(f'initial_stride={initial_stride} expected a value > 0')
        self.ls_stages = tuple(bool(v) for v in ls_stages)
        self.stage_conv = (dict(type='LSConv', phase=0.5) if stage_conv is None
                           else dict(stage_conv))
        for stage, layer_name in enumerate(self.res_layers):
            if not self.ls_stages[stage]:
                continue
            for block in getattr(self, layer_name):
                self._convert_block(block, all_3x3)
        for module in self.modules():
            if isinstance(module, LSConv2d) and module.stride_leader is None:
                if initial_stride is not None and max(module.stride) > 1:
                    module.set_initial_stride(initial_stride)
                module.learnable_stride.requires_grad_(learn_stride)
                if module.learnable_phase is not None:
                    module.learnable_phase.requires_grad_(learn_stride)

    def _convert_block(self, block: nn.Module, all_3x3: bool) -> None:
        """Replaces the block's strided (or 3x3) convs; aligns its shortcut with them."""
        strided = None
        for name in CONV_NAMES:
            conv = getattr(block, name, None)
            if not isinstance(conv, nn.Conv2d):
                continue
            is_strided = max(conv.stride) > 1
            if is_strided or (all_3x3 and conv.kernel_size == (3, 3)):
                new = self._rebuild(conv, self.stage_conv)
                setattr(block, name, new)
                if is_strided:
                    strided = new
        downsample = getattr(block, 'downsample', None)
        if downsample is None or not isinstance(strided, (LSConv2d, BlurConv2d)):
            return
        convs = [i for i, m in enumerate(downsample) if isinstance(m, nn.Conv2d)]
        shortcut = downsample[convs[0]] if convs else None
        if shortcut is None or shortcut.stride != strided.stride:
            raise ValueError('the strided shortcut of a block with a replaced strided conv must '
                             f'be a conv with stride {strided.stride} (avg_down=False); got '
                             f'{shortcut!r}')
        if isinstance(strided, BlurConv2d):  # blurred as the main branch is
            downsample[convs[0]] = self._rebuild(shortcut, self.stage_conv)
            return
        follower = self._rebuild(shortcut, dict(type='LSConv'))
        follower.follow_stride(strided)
        downsample[convs[0]] = follower

    @staticmethod
    def _rebuild(conv: nn.Conv2d, cfg: dict) -> nn.Module:
        """A layer of type ``cfg`` with the geometry of ``conv``."""
        return build_conv_layer(cfg, conv.in_channels, conv.out_channels, conv.kernel_size,
                                stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                                groups=conv.groups, bias=conv.bias is not None)

    def learned_strides(self) -> Tuple[Tuple[str, LSConv2d], ...]:
        """(name, layer) of every LSConv with its own learned stride."""
        return tuple((name, m) for name, m in self.named_modules()
                     if isinstance(m, LSConv2d) and m.stride_leader is None)


class BlurResNet(LSResNet):
    """mmdet's ResNet anti-aliased by a fixed blur where LSResNet puts LSConv: the strided convs
    of the chosen stages and their strided shortcuts become :class:`BlurConv2d` (BlurPool's
    binomial filter), the stem unchanged. Parameter names are ResNet's, so a ResNet
    checkpoint (or the fixed-stride model's initial weights, through ``load_from``) loads.

    Args:
        order: ``'conv-blur'`` (Zhang's placement: the conv at stride 1, then the blur
            subsampled) or ``'blur-conv'`` (the blur at stride 1, then the strided conv).
        filter_size: binomial taps per axis, default 3 ([1, 2, 1]).
        ls_stages: per stage, whether its strided convs are blurred; default stages 2-4.
        Other arguments: as mmdet's ResNet.
    """

    def __init__(self, *args, order: str = 'conv-blur', filter_size: int = 3,
                 ls_stages: Sequence[bool] = (False, True, True, True), **kwargs) -> None:
        super().__init__(*args, ls_stages=ls_stages,
                         stage_conv=dict(type='BlurConv', order=order, filter_size=filter_size),
                         **kwargs)

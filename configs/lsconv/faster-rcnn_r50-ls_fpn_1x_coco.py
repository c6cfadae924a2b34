# Faster R-CNN R-50-FPN 1x COCO with LSConv in the strided convs of ResNet stages
# 2-4, LSResNet's default: each samples half a pixel in (phase=0.5) at the nominal
# stride, a fixed 2 x 2 box blur before it subsamples (the anti-aliasing study's
# choice: as good as learned strides or BlurPool there, at 0.4% more multiply-adds,
# and it exports as a plain convolution). One stride per strided block, shared with
# its shortcut so the residual sum stays aligned. To learn the strides from there:
# model = dict(backbone=dict(learn_stride=True)); the settings below then apply.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmlstride'], allow_failed_imports=False)

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True)))
# The strides and phases get their own learning rate and no weight decay.
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys={'learnable_stride': dict(lr_mult=0.1, decay_mult=0.0),
                 'learnable_phase': dict(lr_mult=0.1, decay_mult=0.0)}))
custom_hooks = [dict(type='StrideLoggerHook', interval=50)]

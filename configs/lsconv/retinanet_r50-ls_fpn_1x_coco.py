# RetinaNet R-50-FPN 1x COCO with LSConv in the strided convs of ResNet stages 2-4
# at LSResNet's default (the half-pixel phase, strides frozen; see
# faster-rcnn_r50-ls_fpn_1x_coco.py). To learn the strides:
# model = dict(backbone=dict(learn_stride=True)); the settings below then apply.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmlstride'], allow_failed_imports=False)

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True)))
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys={'learnable_stride': dict(lr_mult=0.1, decay_mult=0.0),
                 'learnable_phase': dict(lr_mult=0.1, decay_mult=0.0)}))
custom_hooks = [dict(type='StrideLoggerHook', interval=50)]

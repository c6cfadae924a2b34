# LSConv in the strided convs of stages 2-4 with a learned phase: each grid also learns a
# free translation (t_h, t_w) (corner pivot), at the strides' learning rate, without decay
# (the base config's optimizer setting). LSResNet's default since this study.
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', learn_phase=True), learn_stride=True))

# LSConv in the strided convs of stages 2-4, each grid stretching about its output map's
# centre pixel (pivot='centre': phase c * (s0 - s), c = (out - 1) / 2), not its corner.
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', pivot='centre'), learn_stride=True))

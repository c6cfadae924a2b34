# The fixed half-pixel phase, strides learned, on scaled digits (see
# ../digits/retinanet_r18n-ls-half_digits.py).
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', phase=0.5), learn_stride=True))

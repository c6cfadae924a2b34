# The fixed half-pixel phase, strides frozen at 2, on scaled digits: the op's own fixed
# anti-aliasing (see ../digits/retinanet_r18n-ls-half-frozen_digits.py).
_base_ = './retinanet_r18n-ls-half_scaled-digits.py'

model = dict(backbone=dict(learn_stride=False))

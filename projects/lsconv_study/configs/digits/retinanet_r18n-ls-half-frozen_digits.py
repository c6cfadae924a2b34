# The fixed half-pixel phase with the strides frozen at the nominal 2: a pure fixed
# anti-aliasing by the op itself (a 2 x 2 box average, then the plain strided conv), nothing
# learned beyond the fixed model's weights.
_base_ = './retinanet_r18n-ls-half_digits.py'

model = dict(backbone=dict(learn_stride=False))

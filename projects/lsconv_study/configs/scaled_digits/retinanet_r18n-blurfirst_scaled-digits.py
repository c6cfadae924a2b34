# Blur-first on scaled digits: the [1, 2, 1] x [1, 2, 1] blur at stride 1, then the strided
# conv (see ../digits/retinanet_r18n-blurfirst_digits.py).
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='blur-conv', filter_size=3))

# BlurPool's placement on scaled digits: each strided conv of stages 2-4 (and its strided
# shortcut) at stride 1, then a [1, 2, 1] x [1, 2, 1] blur subsampled at stride 2 (see
# ../digits/retinanet_r18n-blurpool_digits.py).
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='conv-blur', filter_size=3))

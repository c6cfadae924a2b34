# The fixed anti-aliasing baseline in LSConv's places (the strided convs of stages 2-4 and
# their strided shortcuts, the stem unchanged): BlurPool's placement, each conv at stride 1
# then a [1, 2, 1] x [1, 2, 1] binomial blur subsampled at stride 2 (Zhang, ICML 2019). Same
# parameter names as the fixed model, so its initial weights load through load_from.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='conv-blur', filter_size=3))

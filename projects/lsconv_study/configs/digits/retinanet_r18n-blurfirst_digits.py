# The cheaper fixed anti-aliasing: in LSConv's places, the [1, 2, 1] x [1, 2, 1] binomial blur
# at stride 1, then the conv at its stride (the conv's own multiply-adds plus a depthwise
# blur). Same parameter names as the fixed model, so its initial weights load through load_from.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='blur-conv', filter_size=3))

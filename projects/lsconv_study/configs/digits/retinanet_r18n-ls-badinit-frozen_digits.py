# The same bad initial strides (1.5, nominal 2), frozen: what learning has to recover.
_base_ = './retinanet_r18n-ls-badinit_digits.py'

model = dict(backbone=dict(learn_stride=False))

# Bad initial strides: the learned strides of stages 2-4 start at 1.5 (nominal 2).
_base_ = './retinanet_r18n-ls_digits.py'

model = dict(backbone=dict(initial_stride=1.5))

# The control: LSConv in the same places, strides frozen at the nominal 2. Each step computes what
# the fixed-stride baseline computes, up to float rounding in the gradients (which 1200 steps
# amplify): with the same initial weights its mAP differs from the baseline's only by that noise,
# the floor against which a learned-stride difference is read.
_base_ = './retinanet_r18n-ls_digits.py'

model = dict(backbone=dict(learn_stride=False))

# Faster R-CNN with the fixed half-pixel phase, strides learned (see
# retinanet_r18n-ls-half_digits.py).
_base_ = './faster-rcnn_r18n_digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', phase=0.5), learn_stride=True))

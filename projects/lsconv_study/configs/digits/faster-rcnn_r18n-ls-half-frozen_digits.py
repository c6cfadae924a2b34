# Faster R-CNN with the fixed half-pixel phase, strides frozen at 2 (see
# retinanet_r18n-ls-half-frozen_digits.py).
_base_ = './faster-rcnn_r18n-ls-half_digits.py'

model = dict(backbone=dict(learn_stride=False))

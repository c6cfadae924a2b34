# Faster R-CNN with blur-first: the [1, 2, 1] x [1, 2, 1] blur at stride 1, then the strided
# conv (see retinanet_r18n-blurfirst_digits.py).
_base_ = './faster-rcnn_r18n_digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='blur-conv', filter_size=3))

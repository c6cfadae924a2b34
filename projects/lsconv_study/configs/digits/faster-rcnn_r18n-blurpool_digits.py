# Faster R-CNN with BlurPool's placement: conv at stride 1, then the [1, 2, 1] x [1, 2, 1]
# blur subsampled at stride 2 (see retinanet_r18n-blurpool_digits.py).
_base_ = './faster-rcnn_r18n_digits_fixed.py'

model = dict(backbone=dict(type='BlurResNet', order='conv-blur', filter_size=3))

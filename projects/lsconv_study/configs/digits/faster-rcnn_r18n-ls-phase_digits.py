# LSConv in the strided convs of stages 2-4 with a learned phase (LSResNet's default): the
# two-stage counterpart of retinanet_r18n-ls-phase_digits.py.
_base_ = './faster-rcnn_r18n_digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', learn_phase=True), learn_stride=True))

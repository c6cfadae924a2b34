# LSConv in the strided convs of stages 2-4, one stride per block (aligned shortcut).
_base_ = './retinanet_r18n_scaled-digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv'),  # corner grid, no phase
                           learn_stride=True))

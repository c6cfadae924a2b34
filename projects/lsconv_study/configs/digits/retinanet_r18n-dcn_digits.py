# Deformable convs (mmcv DCN) in the same places as LSConv in retinanet_r18n-ls_digits.py.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='DCN', deform_groups=1)))

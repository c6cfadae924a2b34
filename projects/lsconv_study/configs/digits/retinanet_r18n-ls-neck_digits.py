# The neck variant: LSConv in the backbone's strided convs of stages 2-4 (as
# retinanet_r18n-ls_digits.py) and in every conv of the FPN (`conv_cfg=dict(type='LSConv')`):
# its stride-2 extra convs (P6, P7) learn their strides, and so do its stride-1 lateral and
# output convs (a learned stride there zooms the map about its top-left corner). On 128 px
# canvases P6 and P7 hold negatives only (retinanet_r18n-p6p7_digits_fixed.py), and P7's map is
# 1 x 1: its only output pixel samples at a = b = 0, so its stride gets no gradient and stays
# at 2.
_base_ = './retinanet_r18n-p6p7_digits_fixed.py'

model = dict(
    backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                  stage_conv=dict(type='LSConv'), learn_stride=True),  # corner grids, no phase
    neck=dict(conv_cfg=dict(type='LSConv')))

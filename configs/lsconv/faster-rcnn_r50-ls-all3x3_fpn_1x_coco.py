# DCN-style placement: LSConv in every 3x3 conv of ResNet stages 2-4, each learning
# its stride (the stride-1 ones around 1) and a phase, strided blocks aligned with
# their shortcuts as in faster-rcnn_r50-ls_fpn_1x_coco.py.
_base_ = './faster-rcnn_r50-ls_fpn_1x_coco.py'

model = dict(backbone=dict(all_3x3=True, stage_conv=dict(type='LSConv', learn_phase=True),
                           learn_stride=True))

# A two-stage detector on the digits benchmark: Faster R-CNN on the same narrow ResNet-18
# (32-256 channels) and FPN as the RetinaNet configs, fixed integer strides; data, schedule
# and optimiser from retinanet_r18n_digits_fixed.py. RPN anchors of 16-96 px (scales 2 and
# 3 at strides 8-32) cover the 16-48 px digits.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(
    _delete_=True,
    type='FasterRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[20.0, 20.0, 20.0], std=[60.0, 60.0, 60.0],
        bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        type='ResNet', depth=18, base_channels=32, num_stages=4, out_indices=(1, 2, 3),
        frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
        style='pytorch', init_cfg=None),
    neck=dict(type='FPN', in_channels=[64, 128, 256], out_channels=64, num_outs=3),
    rpn_head=dict(
        type='RPNHead', in_channels=64, feat_channels=64,
        anchor_generator=dict(
            type='AnchorGenerator', scales=[2, 3], ratios=[1.0, 1.5], strides=[8, 16, 32]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=64, featmap_strides=[8, 16, 32]),
        bbox_head=dict(
            type='Shared2FCBBoxHead', in_channels=64, fc_out_channels=256, roi_feat_size=7,
            num_classes=10,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(
            nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(
            assigner=dict(
                type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                add_gt_as_proposals=True),
            pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(
            nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))

# The CPU detection study: RetinaNet on a narrow ResNet-18 (32-256
# channels) at 128 px, on digits canvases generated from scikit-learn's
# handwritten digits (DigitsDetectionDataset: made on first use under
# data/digits_detection, nothing downloaded). This config is the baseline with
# fixed integer strides; the others in this folder change only the backbone.
_base_ = 'mmdet::_base_/default_runtime.py'
# The study's package registers the datasets: run from the repository's root with it on
# PYTHONPATH, e.g. `PYTHONPATH=$PWD mim train mmdet CONFIG` (see the project's README).
custom_imports = dict(imports=['mmlstride', 'projects.lsconv_study.lsconv_study'],
                      allow_failed_imports=False)

max_iters = 1200
data_root = 'data/digits_detection/'
dataset_type = 'DigitsDetectionDataset'

model = dict(
    type='RetinaNet',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[20.0, 20.0, 20.0], std=[60.0, 60.0, 60.0],
        bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        type='ResNet', depth=18, base_channels=32, num_stages=4, out_indices=(1, 2, 3),
        frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
        style='pytorch', init_cfg=None),
    neck=dict(type='FPN', in_channels=[64, 128, 256], out_channels=64, num_outs=3),
    bbox_head=dict(
        type='RetinaHead', num_classes=10, in_channels=64, stacked_convs=2, feat_channels=64,
        anchor_generator=dict(
            type='AnchorGenerator', octave_base_scale=2, scales_per_octave=2,
            ratios=[1.0, 1.5], strides=[8, 16, 32]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                      ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/val.json',
                 data_prefix=dict(img='val/'), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json',
                     metric='bbox', format_only=False)
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=5.0),
    # Learned strides and phases: their own learning rate (Adam steps of up to 0.02 px), no
    # weight decay.
    paramwise_cfg=dict(custom_keys={'learnable_stride': dict(lr_mult=20.0, decay_mult=0.0),
                                    'learnable_phase': dict(lr_mult=20.0, decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=200, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type='DetVisualizationHook'))
custom_hooks = [dict(type='StrideLoggerHook', interval=50)]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)

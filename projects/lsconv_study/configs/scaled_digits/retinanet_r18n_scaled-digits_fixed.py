# The digits benchmark's RetinaNet (narrow ResNet-18, fixed integer strides) on the harder
# scaled digits data: 256 px canvases, 2-8 digits of 12 to 96 px on darkened photographs
# with clutter (ScaledDigitsDetectionDataset: made on first use under
# data/scaled_digits_detection, nothing downloaded). The other configs in this folder
# change only the backbone.
_base_ = '../digits/retinanet_r18n_digits_fixed.py'

data_root = 'data/scaled_digits_detection/'
dataset_type = 'ScaledDigitsDetectionDataset'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# 800 iterations (the digits configs train 1200): a 256 px iteration costs about 2.3 times
# a 128 px one, and the study's seeds of this suite have to fit in its compute budget
# (README, detection study).
max_iters = 800
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=200, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))

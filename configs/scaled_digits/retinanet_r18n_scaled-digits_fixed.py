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

# About two minutes on 2 CPU cores: the README's main job (LSConv, short schedule).
_base_ = './retinanet_r18n-ls_digits.py'

max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=max_iters))
custom_hooks = [dict(type='StrideLoggerHook', interval=50)]

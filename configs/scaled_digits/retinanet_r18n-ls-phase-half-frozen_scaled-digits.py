# The control of the learned phase on scaled digits: the phase frozen at half a pixel on both
# axes, strides learned (see ../digits/retinanet_r18n-ls-phase-half-frozen_digits.py).
_base_ = './retinanet_r18n-ls-phase_scaled-digits.py'

model = dict(backbone=dict(stage_conv=dict(type='LSConv', learn_phase=True, initial_phase=0.5)))
# Frozen: no learning rate and no decay for the phase (its gradient is computed, and unused).
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys={'learnable_phase': dict(lr_mult=0.0, decay_mult=0.0)}))

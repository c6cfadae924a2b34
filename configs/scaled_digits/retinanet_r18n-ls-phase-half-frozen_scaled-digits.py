# The control of the learned phase on scaled digits: the phase frozen at half a pixel on both
# axes, strides learned (see ../digits/retinanet_r18n-ls-phase-half-frozen_digits.py).
_base_ = './retinanet_r18n-ls-phase_scaled-digits.py'

model = dict(backbone=dict(stage_conv=dict(type='LSConv', learn_phase=True, initial_phase=0.5)))
# Held: no learning rate of its own and no decay. The cosine schedule's absolute floor
# (eta_min=1e-5) still gives it a tiny one after iteration 200: in the study the phases
# stayed within 3e-4 pixels of 0.5.
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys={'learnable_phase': dict(lr_mult=0.0, decay_mult=0.0)}))

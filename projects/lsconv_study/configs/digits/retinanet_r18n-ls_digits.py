# LSConv in the strided convs of stages 2-4, one stride per block (aligned shortcut), on the
# op's own corner grid (no phase): the benchmark's `lsconv` setting. (LSResNet's default also
# learns a phase: retinanet_r18n-ls-phase_digits.py.)
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv'), learn_stride=True))

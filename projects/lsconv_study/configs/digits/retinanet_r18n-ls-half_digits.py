# LSConv in the strided convs of stages 2-4 with the grid translated by a fixed half pixel on
# both axes (phase=0.5: a buffer, never learned), strides learned. A sample half a pixel
# between pixels averages them, so each strided conv low-passes by a 2 x 2 box before it
# subsamples: a fixed anti-aliasing, with the strides still free to move.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(backbone=dict(type='LSResNet', ls_stages=(False, True, True, True),
                           stage_conv=dict(type='LSConv', phase=0.5), learn_stride=True))

# The baseline of the neck variant: retinanet_r18n_digits_fixed.py with RetinaNet's usual
# five FPN levels, P6 and P7 made by stride-2 3x3 convs from C5 (`add_extra_convs`), and
# anchors one octave smaller (8-181 px over strides 8-128) so the coarse levels see digits
# of 16-48 px (128 px canvases) and of 12-96 px (the scaled set, 256 px). Fixed strides
# everywhere.
_base_ = './retinanet_r18n_digits_fixed.py'

model = dict(
    neck=dict(start_level=0, add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        anchor_generator=dict(octave_base_scale=1, strides=[8, 16, 32, 64, 128])))

"""The study's suites: each a detector on a generated dataset and its settings (configs of
``projects/lsconv_study/configs``), paired on initial weights against a baseline."""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


@dataclass(frozen=True)
class Suite:
    """One comparison: settings (name -> (config in ``configs/<folder>``, description)) of
    one detector on one dataset. ``baseline`` draws the initial weights and every other
    setting is paired with it; ``controls`` pairs a learned setting with its frozen control
    as well, and ``against_corner`` each grid variant with the corner-pivot LSConv;
    ``paired`` are the main settings (``--seeds``), the others get ``--other-seeds``. A suite
    with ``runs_of`` trains and reads its runs (and initial weights) where that suite does,
    so the two share the runs of the settings they have in common. ``pairs`` are further
    comparisons, (setting, minus setting)."""
    folder: str
    title: str
    settings: Dict[str, Tuple[str, str]]
    paired: Tuple[str, ...]
    controls: Dict[str, str] = field(default_factory=dict)
    against_corner: Tuple[str, ...] = ()
    baseline: str = 'fixed'
    runs_of: Optional[str] = None
    pairs: Tuple[Tuple[str, str], ...] = ()


SUITES = {
    'digits': Suite('digits', 'RetinaNet, digits (128 px)', {
        'fixed': ('retinanet_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_digits.py', 'LSConv, strides learned'),
        'frozen': ('retinanet_r18n-ls-frozen_digits.py',
                   'LSConv, strides frozen at the nominal 2 (control)'),
        'dcn': ('retinanet_r18n-dcn_digits.py', 'mmcv DCN, same places'),
        'lsconv-badinit': ('retinanet_r18n-ls-badinit_digits.py',
                           'LSConv, strides start at 1.5, learned'),
        'frozen-badinit': ('retinanet_r18n-ls-badinit-frozen_digits.py',
                           'LSConv, strides start at 1.5, frozen'),
    }, paired=('fixed', 'lsconv', 'frozen'),
        # Learned strides against the same LSConv frozen at their start: only the learning
        # differs.
        controls={'lsconv': 'frozen', 'lsconv-badinit': 'frozen-badinit'}),
    # Where the learned grid is anchored (corner, centre, learned phase) against fixed strides
    # and DCN, on the digits suite's runs.
    'digits-grid': Suite('digits', 'RetinaNet, digits (128 px): where the grid is anchored', {
        'fixed': ('retinanet_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_digits.py', 'LSConv, corner grid (pivot corner)'),
        'lsconv-centre': ('retinanet_r18n-ls-centre_digits.py',
                          'LSConv, grid stretching about the centre (pivot centre)'),
        'lsconv-phase': ('retinanet_r18n-ls-phase_digits.py',
                         'LSConv, corner grid with a learned phase'),
        'lsconv-half': ('retinanet_r18n-ls-half_digits.py',
                        'LSConv, phase fixed at half a pixel, strides learned (control)'),
        'dcn': ('retinanet_r18n-dcn_digits.py', 'mmcv DCN, same places'),
    }, paired=('fixed', 'lsconv', 'dcn'),
        against_corner=('lsconv-centre', 'lsconv-phase', 'lsconv-half', 'dcn'),
        # The learned phase against the same phase frozen at half a pixel: anti-aliasing?
        controls={'lsconv-phase': 'lsconv-half'}, runs_of='digits'),
    'digits-neck': Suite('digits', 'RetinaNet with P3-P7, digits (128 px)', {
        'fixed': ('retinanet_r18n-p6p7_digits_fixed.py', 'fixed integer strides'),
        'lsconv-neck': ('retinanet_r18n-ls-neck_digits.py',
                        'LSConv in the backbone and every FPN conv, strides learned'),
    }, paired=('fixed', 'lsconv-neck')),
    'digits-frcnn': Suite('digits', 'Faster R-CNN, digits (128 px)', {
        'fixed': ('faster-rcnn_r18n_digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('faster-rcnn_r18n-ls_digits.py', 'LSConv, corner grid (pivot corner)'),
        'lsconv-phase': ('faster-rcnn_r18n-ls-phase_digits.py',
                         'LSConv, corner grid with a learned phase'),
        'dcn': ('faster-rcnn_r18n-dcn_digits.py', 'mmcv DCN, same places'),
    }, paired=('fixed', 'lsconv', 'lsconv-phase', 'dcn'),
        against_corner=('lsconv-phase', 'dcn')),
    'scaled': Suite('scaled_digits', 'RetinaNet, scaled digits (256 px)', {
        'fixed': ('retinanet_r18n_scaled-digits_fixed.py', 'fixed integer strides (plain ResNet)'),
        'lsconv': ('retinanet_r18n-ls_scaled-digits.py', 'LSConv, corner grid (pivot corner)'),
        'dcn': ('retinanet_r18n-dcn_scaled-digits.py', 'mmcv DCN, same places'),
        'lsconv-centre': ('retinanet_r18n-ls-centre_scaled-digits.py',
                          'LSConv, grid stretching about the centre (pivot centre)'),
        'lsconv-phase': ('retinanet_r18n-ls-phase_scaled-digits.py',
                         'LSConv, corner grid with a learned phase'),
        'lsconv-half': ('retinanet_r18n-ls-half_scaled-digits.py',
                        'LSConv, phase fixed at half a pixel, strides learned (control)'),
    }, paired=('fixed', 'lsconv'),  # DCN costs 2.3x LSConv at 256 px: --other-seeds
        against_corner=('lsconv-centre', 'lsconv-phase', 'lsconv-half', 'dcn'),
        controls={'lsconv-phase': 'lsconv-half'}),
}

# LSConv against fixed anti-aliasing, on the runs of the suites above: the op's half-pixel
# phase (fixed, strides frozen or learned; or learned) against BlurPool's two placements.
ANTIALIAS_SETTINGS = {
    'lsconv-half-frozen': ('ls-half-frozen', 'LSConv, phase fixed at half a pixel, strides frozen'),
    'lsconv-half': ('ls-half', 'LSConv, phase fixed at half a pixel, strides learned'),
    'blurpool': ('blurpool', 'BlurPool: conv at stride 1, then blur and subsample'),
    'blurfirst': ('blurfirst', 'blur-first: blur at stride 1, then the strided conv'),
}

ANTIALIAS_CONTROLS = {'lsconv-half': 'lsconv-half-frozen', 'lsconv-phase': 'lsconv-half'}

ANTIALIAS_PAIRS = (('blurpool', 'lsconv-half-frozen'), ('blurfirst', 'lsconv-half-frozen'),
                   ('blurpool', 'lsconv-half'), ('blurpool', 'blurfirst'))


def antialias_suite(of: str, title: str, prefix: str, suffix: str) -> Suite:
    """The anti-aliasing comparison on the runs of suite ``of`` (configs named
    ``<prefix>-<variant><suffix>``)."""
    base = SUITES[of].settings
    settings = {name: base[name] for name in ('fixed', 'lsconv', 'lsconv-phase') if name in base}
    settings.update({name: (f'{prefix}-{variant}{suffix}', description)
                     for name, (variant, description) in ANTIALIAS_SETTINGS.items()})
    return Suite(SUITES[of].folder, title, settings, paired=('fixed',),
                 controls={k: v for k, v in ANTIALIAS_CONTROLS.items() if k in settings},
                 against_corner=('lsconv-half-frozen', 'lsconv-half', 'blurpool', 'blurfirst'),
                 runs_of=SUITES[of].runs_of or of, pairs=ANTIALIAS_PAIRS)


SUITES['antialias'] = antialias_suite(
    'digits-grid', 'RetinaNet, digits (128 px): LSConv against fixed anti-aliasing',
    'retinanet_r18n', '_digits.py')
SUITES['antialias-scaled'] = antialias_suite(
    'scaled', 'RetinaNet, scaled digits (256 px): LSConv against fixed anti-aliasing',
    'retinanet_r18n', '_scaled-digits.py')
SUITES['antialias-frcnn'] = antialias_suite(
    'digits-frcnn', 'Faster R-CNN, digits (128 px): LSConv against fixed anti-aliasing',
    'faster-rcnn_r18n', '_digits.py')
DEFAULT_SUITE = 'digits'
SETTINGS = SUITES[DEFAULT_SUITE].settings


def config_path(setting: str, suite: str = DEFAULT_SUITE) -> str:
    """The config file of a suite's setting."""
    return os.path.join(CONFIGS, SUITES[suite].folder, SUITES[suite].settings[setting][0])

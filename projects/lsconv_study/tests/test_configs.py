"""The study's configs: each builds its setting (learned strides where it says, their optimizer
group, DCN and BlurPool where it says), and each kind trains a few iterations."""
import glob
import json
import os
from pathlib import Path

import pytest

from conftest import require_module

require_module('mmdet')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmlstride  # noqa: E402,F401  (registrations)
from mmlstride.engine import (find_scalars_json, learned_strides,  # noqa: E402
                              read_stride_trajectories)
from mmlstride.ops import LSConv2d  # noqa: E402
from projects.lsconv_study.lsconv_study.testing import (  # noqa: E402
    check_config_builds, tiny_run_config)

PROJECT = Path(__file__).resolve().parents[1]
REPO = PROJECT.parents[1]
CONFIGS = sorted(glob.glob(str(PROJECT / 'configs' / '**' / '*.py'), recursive=True))
DIGITS = PROJECT / 'configs' / 'digits'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, PROJECT / 'configs'))
def test_every_config_loads_and_builds(path):
    check_config_builds(path)
    assert 'projects.lsconv_study.lsconv_study' in Config.fromfile(path).custom_imports['imports']


@pytest.mark.parametrize('config, stride, learned, lr_mult', [
    ('retinanet_r18n-ls_digits.py', 2.0, True, 20.0),
    ('retinanet_r18n-ls-frozen_digits.py', 2.0, False, 20.0),
    ('retinanet_r18n-ls-badinit_digits.py', 1.5, True, 20.0),
    ('retinanet_r18n-ls-badinit-frozen_digits.py', 1.5, False, 20.0),
    (str(REPO / 'configs' / 'lsconv' / 'faster-rcnn_r50-ls_fpn_1x_coco.py'), 2.0, False, 0.1),
])
def test_config_strides_and_their_optimizer_group(config, stride, learned, lr_mult):
    """Each config's initial strides and whether they learn, and the strides' own learning
    rate and zero weight decay in the optimizer the Runner builds from it."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper
    register_all_modules()
    cfg = Config.fromfile(str(DIGITS / config))
    if 'coco' in config:  # the COCO configs' R-50 is pretrained: build it from scratch here
        cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    strides = learned_strides(model)
    assert len(strides) == 3
    for name, value in strides.items():
        assert value == (stride, stride), name
        assert model.get_submodule(name).learnable_stride.requires_grad == learned, name
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    base = cfg.optim_wrapper.optimizer
    stride_params = {id(m.learnable_stride) for m in model.modules()
                     if isinstance(m, LSConv2d) and m.stride_leader is None}
    groups = [g for g in optim.optimizer.param_groups
              if any(id(p) in stride_params for p in g['params'])]
    if not learned:  # frozen strides stay out of the optimizer
        assert not groups
        return
    assert len(groups) == 3
    for group in groups:
        assert len(group['params']) == 1
        assert group['lr'] == pytest.approx(base.lr * lr_mult)
        assert group['weight_decay'] == 0
    other = next(g for g in optim.optimizer.param_groups if g not in groups)
    assert other['lr'] == pytest.approx(base.lr)


def test_scaled_digits_lsconv_config_trains(tmp_path):
    """Two training iterations of the scaled digits LSConv config on a tiny generated set:
    the data is made where the config says and the strides move."""
    config = str(PROJECT / 'configs' / 'scaled_digits' / 'retinanet_r18n-ls_scaled-digits.py')
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=config)
    runner = Runner.from_cfg(cfg)
    before = learned_strides(runner.model)
    runner.train()
    after = learned_strides(runner.model)
    assert len(after) == 3 and all(after[name] != before[name] for name in before), after
    meta = json.loads((tmp_path / 'data' / 'meta.json').read_text())
    assert meta['dataset'] == 'scaled_digits' and meta['size'] == 256


def test_faster_rcnn_lsconv_config_trains(tmp_path):
    """Two training iterations of the two-stage digits config (Faster R-CNN, LSConv backbone)
    on a tiny generated set: the strides move and evaluation runs."""
    config = str(DIGITS / 'faster-rcnn_r18n-ls_digits.py')
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=config)
    runner = Runner.from_cfg(cfg)
    assert type(runner.model).__name__ == 'FasterRCNN'
    before = learned_strides(runner.model)
    runner.train()
    after = learned_strides(runner.model)
    assert len(after) == 3 and all(after[name] != before[name] for name in before), after


@pytest.mark.parametrize('config,learns', [
    ('digits/retinanet_r18n-ls-half_digits.py', True),
    ('digits/retinanet_r18n-ls-half-frozen_digits.py', False),
    ('scaled_digits/retinanet_r18n-ls-half-frozen_scaled-digits.py', False),
    ('digits/faster-rcnn_r18n-ls-half_digits.py', True)])
def test_half_phase_configs_hold_the_phase(tmp_path, config, learns):
    """The fixed half-pixel phase configs keep every grid translated by (0.5, 0.5) through
    training (a buffer, no parameter); their strides train or stay at 2 as named."""
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data',
                          config=str(PROJECT / 'configs' / config))
    if 'scaled' in config:  # tiny_run_config generates the digits data
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            cfg[loader].dataset.type = 'DigitsDetectionDataset'
    runner = Runner.from_cfg(cfg)
    before = learned_strides(runner.model)
    runner.train()
    after = learned_strides(runner.model)
    assert len(after) == 3
    assert all((after[name] != before[name]) == learns for name in before), after
    layers = [m for m in runner.model.modules()
              if isinstance(m, LSConv2d) and m.stride_leader is None]
    assert [m.fixed_phase.tolist() for m in layers] == [[0.5, 0.5]] * 3
    assert all(m.learnable_phase is None for m in layers)


def test_lsconv_neck_config_trains_the_fpn_strides(tmp_path):
    """Two training iterations of the neck variant (LSConv backbone and FPN): every FPN conv
    learns its stride but P7's, whose 1 x 1 map on 128 px canvases gives its stride no
    gradient (its one output pixel samples at a = b = 0)."""
    config = str(DIGITS / 'retinanet_r18n-ls-neck_digits.py')
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=config)
    runner = Runner.from_cfg(cfg)
    before = learned_strides(runner.model)
    runner.train()
    after = learned_strides(runner.model)
    neck = {name for name in after if name.startswith('neck.')}
    assert len(neck) == 8 and len(after) == 11, sorted(after)
    p7 = 'neck.fpn_convs.4.conv'
    assert after[p7] == before[p7] == (2.0, 2.0)
    assert all(after[name] != before[name] for name in after if name != p7), after


@pytest.mark.parametrize('config', ['retinanet_r18n-ls-centre_digits.py',
                                    'retinanet_r18n-ls-phase_digits.py'])
def test_grid_variant_configs_train(config, tmp_path):
    """Two training iterations of the centre-pivot and learned-phase configs: the strides
    (and the phases, from 0, in their own optimizer groups at the strides' learning rate
    without decay) move, and the hook logs the phases."""
    from mmlstride.engine import PHASE_PREFIX, learned_phases
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=str(DIGITS / config))
    runner = Runner.from_cfg(cfg)
    layers = [m for _, m in runner.model.backbone.learned_strides()]
    assert {m.pivot for m in layers} == {'centre' if 'centre' in config else 'corner'}
    before_strides = learned_strides(runner.model)
    before = learned_phases(runner.model)
    runner.train()
    after_strides = learned_strides(runner.model)
    assert all(after_strides[k] != before_strides[k] for k in before_strides), after_strides
    after = learned_phases(runner.model)
    if 'centre' in config:
        assert not before and not after
        return
    assert len(before) == 3 and all(v == (0.0, 0.0) for v in before.values())
    assert all(after[name] != (0.0, 0.0) for name in after), after
    groups = [g for g in runner.optim_wrapper.optimizer.param_groups
              if any(p is m.learnable_phase for m in layers for p in g['params'])]
    assert len(groups) == 3
    assert all(g['lr'] == pytest.approx(20 * cfg.optim_wrapper.optimizer.lr) and
               g['weight_decay'] == 0 for g in groups)
    trajectories = read_stride_trajectories(find_scalars_json(str(tmp_path / 'work')),
                                            PHASE_PREFIX)
    assert set(trajectories) == set(after)
    for name, series in trajectories.items():
        assert [step for step, _ in series['h']] == [0, 1, 2]
        assert (series['h'][-1][1], series['w'][-1][1]) == pytest.approx(after[name])

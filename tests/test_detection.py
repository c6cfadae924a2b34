"""Detectors with learned strides: configs, aligned residual blocks, the stride hook, the
digits dataset, training through mmengine's Runner, distributed training and mim."""
import argparse
import collections
import glob
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_module

require_module('mmdet')

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmlstride  # noqa: E402,F401  (registrations)
from mmlstride.datasets import (ensure_scaled_digits_detection, generate_digits_detection,  # noqa: E402
                                generate_scaled_digits_detection)
from mmlstride.engine import (find_scalars_json, learned_phases, learned_strides,  # noqa: E402
                              read_stride_trajectories)
from mmlstride.models import LSResNet  # noqa: E402
from mmlstride.ops import LSConv2d  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(glob.glob(str(REPO / 'configs' / '**' / '*.py'), recursive=True))
QUICK = str(REPO / 'configs' / 'digits' / 'retinanet_r18n-ls_digits_quick.py')
SMALL_DATA = dict(num_train=16, num_val=8)


def tiny_run_config(work_dir: Path, data_root: Path, config: str = QUICK, iters: int = 2) -> Config:
    """A config of the digits benchmark cut down to a few iterations on a tiny generated set."""
    cfg = Config.fromfile(config)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
        cfg[loader].dataset.generation = SMALL_DATA
        cfg[loader].batch_size = 4
    cfg.val_evaluator.ann_file = str(data_root / 'annotations' / 'val.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
    cfg.param_scheduler = []
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = iters
    cfg.custom_hooks = [dict(type='StrideLoggerHook', interval=1)]
    cfg.work_dir = str(work_dir)
    cfg.visualizer.name = f'visualizer:{work_dir}'  # one instance per run in this process
    return cfg


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, REPO / 'configs'))
def test_every_config_loads_and_builds(path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(path)
    assert 'mmlstride' in cfg.custom_imports['imports']
    model = MODELS.build(cfg.model)
    strides = learned_strides(model)
    if 'fixed' in path:
        assert not strides
        return
    if 'dcn' in path:
        from mmcv.ops import DeformConv2d
        assert any(isinstance(m, DeformConv2d) for m in model.modules()) and not strides
        return
    if 'blur' in path:
        from mmlstride.ops import BlurConv2d
        assert any(isinstance(m, BlurConv2d) for m in model.modules()) and not strides
        return
    assert strides, 'an LSConv config without a learned stride'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['learnable_stride'].decay_mult == 0
    if learned_phases(model):  # phases get their own group too, without decay
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys['learnable_phase'].decay_mult == 0
    for block in model.backbone.modules():
        downsample = getattr(block, 'downsample', None)
        if downsample is not None and isinstance(downsample[0], LSConv2d):
            assert downsample[0].stride_leader is not None


def test_install_puts_the_configs_in_the_mim_extension():
    """The install links (editable) or copies (wheel) configs/ and tools/ into
    mmlstride/.mim, where mim and mmengine look for a package's configs."""
    mim_dir = Path(mmlstride.__file__).parent / '.mim'
    for config in CONFIGS:
        relative = os.path.relpath(config, REPO / 'configs')
        assert (mim_dir / 'configs' / relative).is_file(), relative
    assert (mim_dir / 'tools' / 'benchmark_detection.py').is_file()
    cfg = Config.fromfile(str(mim_dir / 'configs' / 'digits' / 'retinanet_r18n-ls_digits.py'))
    assert cfg.model.backbone.type == 'LSResNet'


def test_follower_samples_the_leader_grid():
    """A 3x3 main conv reduced to its centre tap and a 1x1 shortcut that follows it read the
    input at the same positions for any stride."""
    torch.manual_seed(0)
    main = LSConv2d(4, 4, 3, stride=2, padding=1, bias=False).double()
    shortcut = LSConv2d(4, 4, 1, stride=2, bias=False).double()
    shortcut.follow_stride(main)
    with torch.no_grad():
        main.learnable_stride.copy_(torch.tensor([1.63, 2.41]))
        main.weight.zero_()
        main.weight[:, :, 1, 1] = torch.eye(4)
        shortcut.weight.copy_(torch.eye(4)[:, :, None, None])
    x = torch.randn(2, 4, 17, 19, dtype=torch.float64)
    torch.testing.assert_close(main(x), shortcut(x))
    assert 'learnable_stride' not in dict(shortcut.named_parameters())
    shortcut(x).sum().backward()
    assert main.learnable_stride.grad.abs().sum() > 0


def test_follow_stride_rejects_misaligned_layers():
    main = LSConv2d(4, 4, 3, stride=2, padding=0)
    shortcut = LSConv2d(4, 4, 1, stride=2)
    with pytest.raises(ValueError, match='centre offset'):
        shortcut.follow_stride(main)
    with pytest.raises(ValueError, match='nominal'):
        LSConv2d(4, 4, 1, stride=1).follow_stride(LSConv2d(4, 4, 1, stride=2))


@pytest.mark.parametrize('depth', [18, 50])
def test_ls_resnet_has_one_stride_per_strided_block(depth):
    backbone = LSResNet(depth=depth, base_channels=8, out_indices=(1, 2, 3))
    names = sorted(name for name, _ in backbone.learned_strides())
    conv = 'conv1' if depth == 18 else 'conv2'
    assert names == [f'layer{i}.0.{conv}' for i in (2, 3, 4)]
    with pytest.raises(ValueError, match='ls_stages'):
        LSResNet(depth=18, ls_stages=(True, True))


@pytest.mark.parametrize('learn_phase', [False, True])
@pytest.mark.parametrize('depth', [18, 50])
def test_ls_resnet_shortcuts_follow_their_block_stride(depth, learn_phase):
    """Each strided block's shortcut is an LSConv that follows the block's strided conv, and
    after the stride (and the learned phase) moves both branches sample with it: each equals
    the pure-PyTorch reference at the leader's moved grid (the kernel centres then sit on the
    same grid)."""
    from mmlstride.ops import ls_conv2d_reference
    backbone = LSResNet(depth=depth, base_channels=8, out_indices=(1, 2, 3),
                        stage_conv=dict(type='LSConv', learn_phase=learn_phase)).double()
    strided = 'conv1' if depth == 18 else 'conv2'
    torch.manual_seed(0)
    for index, layer in enumerate(('layer2', 'layer3', 'layer4')):
        block = getattr(backbone, layer)[0]
        leader, shortcut = getattr(block, strided), block.downsample[0]
        assert isinstance(leader, LSConv2d) and leader.stride_leader is None
        assert isinstance(shortcut, LSConv2d) and shortcut.stride_leader is leader
        assert 'learnable_stride' not in dict(shortcut.named_parameters())
        assert 'learnable_phase' not in dict(shortcut.named_parameters())
        moved = torch.tensor([1.63 + 0.1 * index, 2.41 - 0.2 * index], dtype=torch.float64)
        phase = torch.tensor([0.4, -0.7 + 0.1 * index], dtype=torch.float64)
        with torch.no_grad():
            leader.learnable_stride.copy_(moved)
            if learn_phase:
                leader.learnable_phase.copy_(phase)
        for conv in (leader, shortcut):
            x = torch.randn(2, conv.in_channels, 15, 13, dtype=torch.float64)
            expected = ls_conv2d_reference(x, conv.weight, moved, conv.bias, conv.padding,
                                           conv.dilation, conv.groups, (8, 7),
                                           phase if learn_phase else None)
            torch.testing.assert_close(conv(x), expected)
    # Blocks with stride 1 keep identity shortcuts and plain convs.
    assert backbone.layer2[1].downsample is None
    assert not isinstance(getattr(backbone.layer2[1], strided), LSConv2d)


def test_ls_resnet_with_a_fixed_phase():
    """stage_conv=dict(type='LSConv', phase=0.5): every strided conv holds the phase fixed (no
    phase parameter), its shortcut samples on that grid, and the strides still learn."""
    from mmlstride.ops import ls_conv2d_reference
    backbone = LSResNet(depth=18, base_channels=8, out_indices=(1, 2, 3),
                        stage_conv=dict(type='LSConv', phase=0.5), learn_stride=True).double()
    assert not [name for name, _ in backbone.named_parameters() if 'phase' in name]
    assert sorted(name for name in backbone.state_dict() if 'phase' in name) == [
        f'layer{i}.0.conv1.fixed_phase' for i in (2, 3, 4)]
    block = backbone.layer3[0]
    assert block.conv1.fixed_phase.tolist() == [0.5, 0.5]
    assert block.downsample[0].stride_leader is block.conv1
    x = torch.randn(1, block.downsample[0].in_channels, 9, 9, dtype=torch.float64)
    expected = ls_conv2d_reference(x, block.downsample[0].weight, block.conv1.learnable_stride,
                                   block.downsample[0].bias, (0, 0), (1, 1), 1, (5, 5),
                                   torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(block.downsample[0](x), expected)
    features = backbone(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    grads = torch.autograd.grad(sum(f.sum() for f in features),
                                [m.learnable_stride for _, m in backbone.learned_strides()])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('order', ['conv-blur', 'blur-conv'])
def test_blur_resnet_blurs_where_lsconv_goes_and_loads_resnet_weights(order):
    """BlurResNet: the strided convs of stages 2-4 and their strided shortcuts are BlurConv2d
    (the stem and stride-1 convs unchanged), the parameter names are ResNet's (a ResNet's
    weights load strictly, as the fixed model's initial weights do through load_from), and the
    feature maps have ResNet's sizes."""
    from mmdet.models.backbones import ResNet
    from mmlstride.models import BlurResNet
    from mmlstride.ops import BlurConv2d
    torch.manual_seed(0)
    resnet = ResNet(depth=18, base_channels=8, out_indices=(1, 2, 3))
    backbone = BlurResNet(depth=18, base_channels=8, out_indices=(1, 2, 3), order=order)
    backbone.load_state_dict(resnet.state_dict())
    blurred = sorted(name for name, m in backbone.named_modules() if isinstance(m, BlurConv2d))
    assert blurred == [f'layer{i}.0.{conv}' for i in (2, 3, 4)
                       for conv in ('conv1', 'downsample.0')]
    assert all(m.order == order and m.stride == (2, 2) for name, m in backbone.named_modules()
               if isinstance(m, BlurConv2d))
    x = torch.randn(1, 3, 61, 70)
    backbone.eval()
    resnet.eval()
    with torch.no_grad():
        found, plain = backbone(x), resnet(x)
    assert [f.shape for f in found] == [f.shape for f in plain]
    assert (found[0] - plain[0]).abs().max() > 1e-3  # the blur changes what stage 2 sees


def test_ls_resnet_default_is_the_fixed_half_phase_at_frozen_strides():
    """LSResNet's default (the anti-aliasing study's choice): every strided conv samples half a
    pixel in, a fixed phase (no phase parameter), at the nominal stride, frozen; a 2 x 2 box
    average then the plain strided conv. learn_stride=True learns the strides (and a learned
    phase) from there; dict(type='LSConv') gives the corner grid alone."""
    from mmdet.models.backbones import ResNet
    default = LSResNet(depth=18, base_channels=8).double()
    layers = [m for _, m in default.learned_strides()]
    assert len(layers) == 3
    for m in layers:
        assert m.learnable_phase is None and m.fixed_phase.tolist() == [0.5, 0.5]
        assert m.learnable_stride.tolist() == [2.0, 2.0]
        assert not m.learnable_stride.requires_grad
    # A strided conv of the default is the box average, then the plain conv at stride 2.
    conv = default.layer3[0].conv1
    x = torch.randn(2, conv.in_channels, 12, 12, dtype=torch.float64)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), 2, stride=1)
    expected = torch.nn.functional.conv2d(box, conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    plain = ResNet(depth=18, base_channels=8)
    assert set(plain.state_dict()) <= set(default.state_dict())
    learned = LSResNet(depth=18, learn_stride=True,
                       stage_conv=dict(type='LSConv', learn_phase=True))
    assert all(m.learnable_stride.requires_grad and m.learnable_phase.requires_grad
               for _, m in learned.learned_strides())
    corner = LSResNet(depth=18, stage_conv=dict(type='LSConv'))
    assert all(m.learnable_phase is None and m.fixed_phase is None
               for _, m in corner.learned_strides())


def test_all_3x3_and_initial_stride():
    """all_3x3 makes every 3x3 conv of stages 2-4 an LSConv (13 at depth 50, plus the 3
    strided shortcuts); initial_stride moves only the strided ones."""
    backbone = LSResNet(depth=50, base_channels=8, all_3x3=True, initial_stride=1.5,
                        learn_stride=True)
    convs = [m for m in backbone.modules() if isinstance(m, LSConv2d)]
    assert len(convs) == 16
    assert len(LSResNet(depth=50, base_channels=8).learned_strides()) == 3
    assert not any(isinstance(m, LSConv2d) for m in backbone.layer1.modules())
    for layer in (backbone.layer2, backbone.layer3, backbone.layer4):
        for index, block in enumerate(layer):
            assert isinstance(block.conv2, LSConv2d)
            expected = [1.5, 1.5] if index == 0 else [1.0, 1.0]
            assert block.conv2.learnable_stride.tolist() == expected
            assert block.conv2.learnable_stride.requires_grad
            assert not isinstance(block.conv1, LSConv2d) and not isinstance(block.conv3, LSConv2d)


DIGITS = REPO / 'configs' / 'digits'


@pytest.mark.parametrize('config, stride, learned, lr_mult', [
    ('retinanet_r18n-ls_digits.py', 2.0, True, 20.0),
    ('retinanet_r18n-ls-frozen_digits.py', 2.0, False, 20.0),
    ('retinanet_r18n-ls-badinit_digits.py', 1.5, True, 20.0),
    ('retinanet_r18n-ls-badinit-frozen_digits.py', 1.5, False, 20.0),
    ('../lsconv/faster-rcnn_r50-ls_fpn_1x_coco.py', 2.0, False, 0.1),
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


def test_ls_resnet_loads_a_plain_resnet_checkpoint():
    from mmdet.models.backbones import ResNet
    plain = ResNet(depth=18, base_channels=8)
    backbone = LSResNet(depth=18, base_channels=8, initial_stride=3.0)
    with torch.no_grad():
        for _, layer in backbone.learned_strides():
            layer.learnable_stride.fill_(1.7)  # as if trained
    backbone.load_state_dict(plain.state_dict())  # strict: the learned strides are optional
    # A checkpoint without strides (pretrained or shared initial weights) keeps the initial stride.
    assert all(m.learnable_stride.tolist() == [3.0, 3.0] for _, m in backbone.learned_strides())
    for name, value in plain.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name


def test_initial_and_frozen_strides():
    backbone = LSResNet(depth=18, base_channels=8, initial_stride=3.0, learn_stride=False)
    for _, layer in backbone.learned_strides():
        assert layer.learnable_stride.tolist() == [3.0, 3.0]
        assert not layer.learnable_stride.requires_grad


def record_canvas_pools(monkeypatch, module) -> list:
    """The digit pools that ``module._canvas`` is given, one per image, as it draws them."""
    pools = []
    canvas = module._canvas

    def recording_canvas(rng, images, labels, pool, size):
        pools.append(pool)
        return canvas(rng, images, labels, pool, size)

    monkeypatch.setattr(module, '_canvas', recording_canvas)
    return pools


def assert_disjoint_digit_pools(pools: list, num_train: int) -> None:
    """Train images (the first num_train) draw from one pool, 80% of scikit-learn's 1797
    digits, and val images from the other 20%."""
    train, val = {tuple(p) for p in pools[:num_train]}, {tuple(p) for p in pools[num_train:]}
    assert len(train) == len(val) == 1
    train, val = set(train.pop()), set(val.pop())
    assert not train & val and len(train | val) == 1797 and len(train) == int(0.8 * 1797)


def tree_digest(root: Path) -> dict:
    """sha256 of every file under root, by relative path."""
    files = sorted(p for p in root.rglob('*') if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_digits_dataset_is_deterministic(tmp_path):
    generate_digits_detection(str(tmp_path / 'a'), num_train=5, num_val=3)
    generate_digits_detection(str(tmp_path / 'b'), num_train=5, num_val=3)
    generate_digits_detection(str(tmp_path / 'c'), num_train=5, num_val=3, seed=1)
    assert tree_digest(tmp_path / 'a') == tree_digest(tmp_path / 'b')
    assert tree_digest(tmp_path / 'a') != tree_digest(tmp_path / 'c')
    coco = json.loads((tmp_path / 'a' / 'annotations' / 'train.json').read_text())
    assert len(coco['images']) == 5 and coco['annotations']
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
        assert 1 <= ann['category_id'] <= 10


@pytest.mark.parametrize('generate', [generate_digits_detection,
                                      generate_scaled_digits_detection])
def test_ground_truth_as_detections_scores_full_map(tmp_path, generate):
    """mmdet's CocoMetric, given every ground-truth box as a detection, reports mAP 1.0: each
    object can be found (pycocotools never counts a ground truth of annotation id 0)."""
    from mmdet.evaluation import CocoMetric
    generate(str(tmp_path), num_train=2, num_val=6)
    ann_file = str(tmp_path / 'annotations' / 'val.json')
    coco = json.loads(Path(ann_file).read_text())
    metric = CocoMetric(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = {'classes': tuple(str(d) for d in range(10))}
    for image in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)])
        metric.process({}, [{'img_id': image['id'], 'ori_shape': (image['height'], image['width']),
                             'pred_instances': {
                                 'bboxes': boxes, 'scores': torch.ones(len(anns)),
                                 'labels': torch.tensor([a['category_id'] - 1 for a in anns])}}])
    assert metric.evaluate(len(coco['images']))['coco/bbox_mAP'] == pytest.approx(1.0)


def test_digits_dataset_has_1_to_4_digits_and_disjoint_samples(tmp_path, monkeypatch):
    """Every image has 1-4 digits (all counts occur), and train and val canvases draw from
    disjoint digit samples, 80% and 20% of scikit-learn's 1797."""
    from mmlstride.datasets import digits_detection
    pools = record_canvas_pools(monkeypatch, digits_detection)
    generate_digits_detection(str(tmp_path / 'd'), num_train=60, num_val=20)
    for split, count in (('train', 60), ('val', 20)):
        coco = json.loads((tmp_path / 'd' / 'annotations' / f'{split}.json').read_text())
        per_image = [sum(a['image_id'] == image['id'] for a in coco['annotations'])
                     for image in coco['images']]
        assert len(per_image) == count and min(per_image) >= 1 and max(per_image) <= 4
        if split == 'train':
            assert set(per_image) == {1, 2, 3, 4}
    assert_disjoint_digit_pools(pools, num_train=60)


def test_scaled_digits_dataset_is_deterministic(tmp_path):
    generate_scaled_digits_detection(str(tmp_path / 'a'), num_train=4, num_val=2)
    generate_scaled_digits_detection(str(tmp_path / 'b'), num_train=4, num_val=2)
    generate_scaled_digits_detection(str(tmp_path / 'c'), num_train=4, num_val=2, seed=1)
    assert tree_digest(tmp_path / 'a') == tree_digest(tmp_path / 'b')
    assert tree_digest(tmp_path / 'a') != tree_digest(tmp_path / 'c')
    for split in ('train', 'val'):
        coco = json.loads((tmp_path / 'a' / 'annotations' / f'{split}.json').read_text())
        assert all(image['width'] == image['height'] == 256 for image in coco['images'])
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256 and w > 0 and h > 0
            assert 1 <= ann['category_id'] <= 10
    ensure_scaled_digits_detection(str(tmp_path / 'a'), num_train=4, num_val=2)  # there
    with pytest.raises(FileExistsError, match='data_root'):
        ensure_scaled_digits_detection(str(tmp_path / 'a'), num_train=5, num_val=2)


def test_scaled_digits_span_8x_in_size_on_cluttered_photographs(tmp_path, monkeypatch):
    """Digits of 12 to 96 px (each image 1-8 of them, most of the range used), from disjoint
    train and val samples, on photographs (many distinct colours outside the boxes) that carry
    strokes brighter than the darkened photograph."""
    from PIL import Image
    from mmlstride.datasets import scaled_digits_detection
    pools = record_canvas_pools(monkeypatch, scaled_digits_detection)
    root = tmp_path / 's'
    generate_scaled_digits_detection(str(root), num_train=40, num_val=10)
    sides = []
    for split, count in (('train', 40), ('val', 10)):
        coco = json.loads((root / 'annotations' / f'{split}.json').read_text())
        per_image = [[a for a in coco['annotations'] if a['image_id'] == image['id']]
                     for image in coco['images']]
        assert len(per_image) == count and all(1 <= len(boxes) <= 8 for boxes in per_image)
        for image, boxes in zip(coco['images'], per_image):
            pixels = np.asarray(Image.open(root / split / image['file_name']), dtype=np.float32)
            outside = np.ones(pixels.shape[:2], dtype=bool)
            for ann in boxes:
                x, y, w, h = ann['bbox']
                outside[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = False
                sides.append(max(w, h))
            background = pixels[outside]
            # a photograph (many distinct colours), with strokes above its darkened maximum
            assert len(np.unique(background, axis=0)) > 500 and background.max() > 90, image
    assert min(sides) <= 16 and max(sides) >= 6 * min(sides), (min(sides), max(sides))
    assert_disjoint_digit_pools(pools, num_train=40)


def test_scaled_digits_lsconv_config_trains(tmp_path):
    """Two training iterations of the scaled digits LSConv config on a tiny generated set:
    the data is made where the config says and the strides move."""
    config = str(REPO / 'configs' / 'scaled_digits' / 'retinanet_r18n-ls_scaled-digits.py')
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
    config = str(REPO / 'configs' / 'digits' / 'faster-rcnn_r18n-ls_digits.py')
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
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=str(REPO / 'configs' / config))
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
    config = str(REPO / 'configs' / 'digits' / 'retinanet_r18n-ls-neck_digits.py')
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


def test_detector_trains_and_the_hook_logs_strides(tmp_path):
    """Two training iterations of the LSConv benchmark detector through mmengine's Runner: the
    strides move, each strided block keeps one grid, and the hook logs every stride."""
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data')
    runner = Runner.from_cfg(cfg)
    before = learned_strides(runner.model)
    assert len(before) == 3 and all(v == (2.0, 2.0) for v in before.values())
    runner.train()
    after = learned_strides(runner.model)
    assert all(after[name] != before[name] for name in before), after
    backbone = runner.model.backbone
    for layer in ('layer2', 'layer3', 'layer4'):
        block = getattr(backbone, layer)[0]
        assert block.downsample[0].stride_leader is block.conv1
    trajectories = read_stride_trajectories(find_scalars_json(str(tmp_path / 'work')))
    assert set(trajectories) == set(after)
    for name, series in trajectories.items():
        assert [step for step, _ in series['h']] == [0, 1, 2]
        assert series['h'][0][1] == 2.0
        assert (series['h'][-1][1], series['w'][-1][1]) == pytest.approx(after[name])


def test_plot_strides_tool(tmp_path):
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', iters=1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    Runner.from_cfg(cfg).train()
    out = tmp_path / 'strides.png'
    subprocess.run([sys.executable, str(REPO / 'tools' / 'plot_strides.py'),
                    str(tmp_path / 'work'), '--out', str(out)], check=True)
    assert out.read_bytes()[:4] == b'\x89PNG'


def write_tiny_config(tmp_path: Path, **changes) -> Path:
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', iters=3)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.train_cfg.val_interval = 100
    cfg.merge_from_dict(changes)
    path = tmp_path / 'tiny.py'
    cfg.dump(str(path))
    return path


def test_distributed_gloo_keeps_strides_identical(tmp_path):
    """Two processes, gloo on CPU, through torchrun and mmengine's Runner (tools/train.py):
    the hook checks at every iteration that both ranks hold the same strides (it raises
    otherwise)."""
    config = write_tiny_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         '--master_port=29517', str(REPO / 'tools' / 'train.py'), str(config),
         '--launcher', 'pytorch'],
        capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'strides at iter 3 (identical on 2 ranks)' in log, log[-4000:]


def test_mim_train_runs_a_benchmark_config(tmp_path):
    config = write_tiny_config(tmp_path)
    mim = str(Path(sys.executable).with_name('mim'))
    result = subprocess.run([mim, 'train', 'mmdet', str(config), '--gpus', '0', '--launcher',
                             'none', '--work-dir', str(tmp_path / 'mim'), '-y'],
                            capture_output=True, text=True, timeout=600,
                            cwd=str(tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert 'strides at iter 3' in log, log[-4000:]


def load_benchmark_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_detection', REPO / 'tools' / 'benchmark_detection.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordStart(Hook):
    """Records the model's state when training starts (after init and ``load_from``), the
    images of the first batches, and the training losses."""

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        self.requires_grad = {k: p.requires_grad for k, p in runner.model.named_parameters()}
        self.images, self.losses = [], []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.images.append([s.img_id for s in data_batch['data_samples']])

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(outputs['loss'].item())


# Per suite of the detection benchmark: each LSConv setting's number of learned strides and
# where they start (the neck's: at their nominal strides, 2 for the backbone's 3 and P6, P7,
# 1 for the FPN's 6 others).
SUITE_STRIDES = {
    'digits': {'lsconv': (3, 2.0), 'frozen': (3, 2.0), 'lsconv-badinit': (3, 1.5),
               'frozen-badinit': (3, 1.5)},
    'digits-grid': {'lsconv': (3, 2.0), 'lsconv-centre': (3, 2.0), 'lsconv-phase': (3, 2.0),
                    'lsconv-half': (3, 2.0)},
    'digits-neck': {'lsconv-neck': (11, {2.0: 5, 1.0: 6})},
    'digits-frcnn': {'lsconv': (3, 2.0), 'lsconv-phase': (3, 2.0)},
    'scaled': {'lsconv': (3, 2.0), 'lsconv-centre': (3, 2.0), 'lsconv-phase': (3, 2.0),
               'lsconv-half': (3, 2.0)},
    **{suite: {'lsconv': (3, 2.0), 'lsconv-phase': (3, 2.0), 'lsconv-half': (3, 2.0),
               'lsconv-half-frozen': (3, 2.0)}
       for suite in ('antialias', 'antialias-scaled', 'antialias-frcnn')},
}
# Settings whose grid is translated by a fixed half pixel, and those with frozen strides.
HALF_PHASE = ('lsconv-half', 'lsconv-half-frozen')
FROZEN = ('frozen', 'frozen-badinit', 'lsconv-half-frozen')


@pytest.mark.parametrize('suite', list(SUITE_STRIDES))
def test_benchmark_settings_start_from_the_same_weights_and_data(tmp_path, suite):
    """Within a seed, every setting of a detection benchmark suite starts from the same
    initial weights on every key it shares with the fixed-stride model, with its own stride
    value, and sees the same batches; the frozen-at-nominal control trains as the fixed model
    does."""
    tool = load_benchmark_tool()
    assert set(tool.SUITES) == set(SUITE_STRIDES)
    weights = tool.write_initial_weights(3, str(tmp_path / 'seed3.pth'), suite=suite)
    starts = {}
    for setting in tool.SUITES[suite].settings:
        cfg = tiny_run_config(tmp_path / setting, tmp_path / 'data',
                              tool.config_path(setting, suite))
        parser = argparse.ArgumentParser()  # as mmdet's train tool reads the options
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(
            ['--cfg-options', *tool.seed_options(3, weights)]).cfg_options)
        cfg.merge_from_dict({'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None})
        cfg.train_cfg.val_interval = 100
        runner = Runner.from_cfg(cfg)
        runner.register_hook(RecordStart(), 'LOWEST')
        runner.train()
        starts[setting] = next(h for h in runner.hooks if isinstance(h, RecordStart))
    fixed = starts['fixed']
    for setting, start in starts.items():
        shared = set(start.state) & set(fixed.state)
        assert len(shared) > 0.9 * len(fixed.state), setting
        for key in shared:
            assert torch.equal(start.state[key], fixed.state[key]), (setting, key)
        assert start.images == fixed.images, setting
        count, value = SUITE_STRIDES[suite].get(setting, (0, None))
        stride_keys = [k for k in start.state if k.endswith('learnable_stride')]
        assert len(stride_keys) == count, setting
        values = [start.state[key].tolist() for key in stride_keys]
        assert all(h == w for h, w in values), (setting, values)
        expected = value if isinstance(value, dict) else {value: count} if count else {}
        assert collections.Counter(h for h, _ in values) == expected, (setting, values)
        for key in stride_keys:
            assert start.requires_grad[key] == (setting not in FROZEN), (setting, key)
        phase_keys = [k for k in start.state if k.endswith('learnable_phase')]
        assert len(phase_keys) == (3 if setting.startswith('lsconv-phase') else 0), setting
        assert all(start.state[key].tolist() == [0.0, 0.0] for key in phase_keys), setting
        held = [start.state[k].tolist() for k in start.state if k.endswith('fixed_phase')]
        assert held == ([[0.5, 0.5]] * 3 if setting in HALF_PHASE else []), setting
    # The weights were drawn from this suite's fixed model: they are all of its start.
    checkpoint = torch.load(weights)
    assert checkpoint['meta']['drawn_by'] == tool.SUITES[suite].settings['fixed'][0]
    assert set(checkpoint['state_dict']) == set(fixed.state)
    assert all(torch.equal(v, fixed.state[k]) for k, v in checkpoint['state_dict'].items())
    if 'dcn' in starts:
        assert any(k.endswith('conv_offset.weight') for k in starts['dcn'].state)
    # Every LSConv grid but the moved ones starts as nn.Conv2d's: the same first loss
    # (RetinaNet's; Faster R-CNN samples proposals at random, and building LSConv layers draws
    # from the generator).
    for setting in starts if 'frcnn' not in suite else ():
        if setting.startswith('lsconv') and setting not in ('lsconv-badinit', *HALF_PHASE):
            assert starts[setting].losses[0] == pytest.approx(fixed.losses[0], rel=1e-5), setting
    if suite != 'digits':
        return
    # Draws differ between seeds; the control computes the fixed model's losses.
    assert not torch.equal(torch.load(tool.write_initial_weights(4, str(tmp_path / 's4.pth')))[
        'state_dict']['backbone.conv1.weight'], fixed.state['backbone.conv1.weight'])
    assert starts['frozen'].losses == pytest.approx(fixed.losses, rel=1e-5)


def test_benchmark_tables_of_no_runs_is_a_clear_error(tmp_path, capsys):
    tool = load_benchmark_tool()
    with pytest.raises(SystemExit):
        tool.main(['--suite', 'scaled', '--no-train', '--work-dir', str(tmp_path)])
    assert '--no-train: no finished run of fixed lsconv' in capsys.readouterr().err


def test_benchmark_summary_pairs_seeds_with_a_confidence_interval(tmp_path):
    tool = load_benchmark_tool()

    def run(value):
        return {'bbox_mAP': value, 'bbox_mAP_50': value + 20, 'seconds_per_iter': 0.1,
                'final_strides': {}, 'scalars': ''}

    runs = {'fixed': {0: run(60.0), 1: run(62.0), 2: run(61.0)},
            'lsconv': {0: run(61.0), 1: run(64.0), 2: run(64.0), 3: run(99.0)}}
    rows, pairs = tool.summarise(runs)
    assert [r['bbox_mAP_mean'] for r in rows] == pytest.approx([61.0, 72.0])
    assert rows[0]['bbox_mAP_std'] == pytest.approx(1.0)
    (pair,) = pairs  # seed 3 has no fixed run: not paired
    assert pair['seeds'] == [0, 1, 2] and pair['differences'] == [1.0, 2.0, 3.0]
    # mean 2, std 1 over 3 seeds: half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert (pair['mean'], pair['ci95']) == pytest.approx((2.0, 2.4841), abs=1e-4)
    table = tool.markdown(rows, pairs, runs)
    # paired t-test: t = 2 / (1 / sqrt(3)) = 3.46 on 2 degrees of freedom, p = 0.074
    assert pair['p_value'] == pytest.approx(0.0742, abs=1e-4)
    assert ('| `lsconv` | `fixed` | 3 | +2.00 | [-0.48, +4.48] | 0.074 | +1.0, +2.0, +3.0 |'
            in table)
    # Learned strides are also paired with their frozen control.
    runs['frozen'] = {0: run(60.5), 1: run(61.0)}
    _, pairs = tool.summarise(runs)
    assert [(p['setting'], p['against'], p['differences']) for p in pairs] == [
        ('lsconv', 'fixed', [1.0, 2.0, 3.0]), ('frozen', 'fixed', [0.5, -1.0]),
        ('lsconv', 'frozen', [0.5, 3.0])]
    # In the grid suite, grid variants are paired with the corner grid too; learned phases
    # and s/iter shown.
    del runs['frozen']
    runs['lsconv-phase'] = {seed: dict(run(63.0), final_phases={'backbone.layer2.0.conv1':
                                                                 (0.25 * seed, -0.5)})
                            for seed in (0, 1)}
    rows, pairs = tool.summarise(runs, 'digits-grid')
    assert ('lsconv-phase', 'lsconv', [2.0, -1.0]) in [
        (p['setting'], p['against'], p['differences']) for p in pairs]
    row, = [line for line in tool.markdown(rows, pairs, runs, 'digits-grid').splitlines()
            if line.startswith('| LSConv, corner grid with a learned phase (`lsconv-phase`) | 2 |')]
    assert '| 0.10 |' in row and row.endswith('| (0.12, 0.50) |')
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{tool.README_START}\nold\n{tool.README_END}\nrest\n')
    tool.rewrite_readme(str(readme), table)
    text = readme.read_text()
    assert 'old' not in text and table in text and text.endswith(f'{tool.README_END}\nrest\n')
    readme.write_text('no markers')
    with pytest.raises(ValueError, match='markers'):
        tool.rewrite_readme(str(readme), table)


def test_benchmark_suites_have_their_own_readme_sections_and_settings(tmp_path, capsys):
    tool = load_benchmark_tool()
    for name, suite in tool.SUITES.items():
        assert suite.baseline in suite.settings and set(suite.paired) <= set(suite.settings)
        for setting in suite.settings:
            assert os.path.isfile(tool.config_path(setting, name)), (name, setting)
        if suite.runs_of:  # shared runs are the same trainings: same configs, same folder
            owner = tool.SUITES[suite.runs_of]
            assert suite.folder == owner.folder and suite.baseline == owner.baseline
            for setting in set(suite.settings) & set(owner.settings):
                assert suite.settings[setting][0] == owner.settings[setting][0], setting
    start, end = tool.readme_markers('scaled')
    assert '--suite scaled' in start and (start, end) != tool.readme_markers()
    readme = tmp_path / 'README.md'
    readme.write_text(f'{tool.README_START}\ndigits\n{tool.README_END}\n{start}\nold\n{end}\n')
    tool.rewrite_readme(str(readme), 'new', 'scaled')
    assert readme.read_text() == (f'{tool.README_START}\ndigits\n{tool.README_END}\n{start}\nnew'
                                  f'\n{end}\n')
    with pytest.raises(SystemExit):
        tool.main(['--suite', 'scaled', '--settings', 'frozen', '--work-dir', str(tmp_path)])
    expected = "--settings frozen: expected some of ['fixed', 'lsconv', 'dcn', 'lsconv-centre'"
    assert expected in capsys.readouterr().err


class StubRunner:
    """What StrideLoggerHook reads of a Runner: the model, the iteration, a visualizer and a
    logger that keep what they are given."""

    def __init__(self, model):
        self.model, self.iter, self.records, self.lines = model, 0, [], []
        self.visualizer = type('Visualizer', (), {'add_scalars': lambda _, scalars, step:
                                                  self.records.append((step, scalars))})()
        self.logger = type('Logger', (), {'info': lambda _, line: self.lines.append(line)})()


def run_stride_hook(hook, runner, iterations):
    hook.before_train(runner)
    for runner.iter in range(iterations):
        hook.after_train_iter(runner, runner.iter)
    runner.iter = iterations
    hook.after_train(runner)


@pytest.mark.parametrize('iterations, steps', [(5, [0, 2, 4, 5]), (4, [0, 2, 4])])
def test_stride_hook_records_every_interval_and_at_the_end(iterations, steps):
    from mmlstride.engine import StrideLoggerHook
    runner = StubRunner(torch.nn.Sequential(LSConv2d(2, 2, 3, stride=2, padding=1)))
    run_stride_hook(StrideLoggerHook(interval=2), runner, iterations)
    assert [step for step, _ in runner.records] == steps
    assert runner.records[-1][1] == {'stride/0/h': 2.0, 'stride/0/w': 2.0}
    assert runner.lines[-1] == f'strides at iter {steps[-1]}: 0 (2.000, 2.000)'


def test_stride_hook_raises_when_ranks_disagree(monkeypatch):
    """The hook gathers every rank's grid states; equal ones are noted in the log, a
    difference raises (the two-process runs are in tests/test_stride_hook_distributed.py)."""
    from mmlstride.engine import StrideLoggerHook, stride_logger_hook
    runner = StubRunner(torch.nn.Sequential(LSConv2d(2, 2, 3, stride=2, padding=1)))
    monkeypatch.setattr(stride_logger_hook, 'get_world_size', lambda: 2)
    monkeypatch.setattr(stride_logger_hook, 'all_gather_object', lambda states: [states, states])
    run_stride_hook(StrideLoggerHook(interval=1), runner, 1)
    assert runner.lines[-1].startswith('strides at iter 1 (identical on 2 ranks)')

    def stride_differs(states):
        other = {name: dict(state) for name, state in states.items()}
        other['0']['stride'] = (2.0, 2.000001)
        return [states, other]

    monkeypatch.setattr(stride_logger_hook, 'all_gather_object', stride_differs)
    with pytest.raises(RuntimeError, match="layer '0': stride differs across ranks"):
        StrideLoggerHook(interval=1).before_train(runner)


def test_benchmark_reuses_only_runs_trained_as_planned(tmp_path):
    """A finished run counts for a seed only if the config mmengine saved with it has that
    seed, those initial weights and the study's overrides; otherwise it is retrained."""
    tool = load_benchmark_tool()
    run_dir = tmp_path / 'fixed' / 'seed3'
    run_dir.mkdir(parents=True)
    weights = str(tmp_path / 'initial_weights' / 'seed3.pth')
    (run_dir / tool.SETTINGS['fixed'][0]).write_text(
        f"load_from = {weights!r}\nrandomness = dict(seed=3)\ntrain_cfg = dict(max_iters=200)\n")
    assert tool.run_is_paired(str(run_dir), 'fixed', 3, weights, ['train_cfg.max_iters=200'])
    assert tool.run_is_paired(str(run_dir), 'fixed', 3, weights, [])
    assert not tool.run_is_paired(str(run_dir), 'fixed', 4, weights, [])
    assert not tool.run_is_paired(str(run_dir), 'fixed', 3, weights + 'x', [])
    assert not tool.run_is_paired(str(run_dir), 'fixed', 3, weights, ['train_cfg.max_iters=300'])
    assert not tool.run_is_paired(str(run_dir), 'lsconv', 3, weights, [])  # nothing saved


def test_benchmark_trains_seed_by_seed(tmp_path, monkeypatch):
    """The plan runs every setting of a seed before the next seed, so a study stopped
    part-way holds whole pairs; the tables keep the suite's order of settings."""
    tool = load_benchmark_tool()
    trained = []

    def fake_train(command, label, work_dir, threads):
        options = dict(o.split('=', 1) for o in command[command.index('--cfg-options') + 1:])
        setting = label.split(',')[0]
        trained.append(label)
        (Path(work_dir) / '20260101_000000' / 'vis_data').mkdir(parents=True)
        (Path(work_dir) / tool.SUITES['digits-grid'].settings[setting][0]).write_text(
            f"load_from = {options['load_from']!r}\n"
            f"randomness = dict(seed={options['randomness.seed']})\n")
        (Path(work_dir) / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
            '{"loss": 1.0, "time": 0.2, "step": 50}\n'
            '{"coco/bbox_mAP": 0.5, "coco/bbox_mAP_50": 0.9, "step": 1200}\n')

    monkeypatch.setattr(tool, 'train', fake_train)
    monkeypatch.setattr(tool, 'write_initial_weights', lambda seed, path, *args: path)
    monkeypatch.setattr(tool, 'plot', lambda *args: None)
    tool.main(['--suite', 'digits-grid', '--settings', 'fixed', 'lsconv', 'lsconv-centre',
               '--seeds', '1', '0', '--other-seeds', '0', '--work-dir', str(tmp_path)])
    assert trained == ['fixed, seed 0', 'lsconv, seed 0', 'lsconv-centre, seed 0',
                       'fixed, seed 1', 'lsconv, seed 1']
    table = (tmp_path / 'detection_benchmark.md').read_text()
    rows = [table.index(f'(`{setting}`)') for setting in ('fixed', 'lsconv', 'lsconv-centre')]
    assert rows == sorted(rows)


def test_benchmark_no_train_reports_the_finished_runs_only(tmp_path, monkeypatch, capsys):
    """--no-train trains nothing and writes no initial weights: the tables hold the finished
    runs of the plan that were trained as planned, and the others are named as left out."""
    tool = load_benchmark_tool()
    monkeypatch.setattr(tool, 'train', lambda *args: pytest.fail('trained with --no-train'))
    monkeypatch.setattr(tool, 'write_initial_weights',
                        lambda *args: pytest.fail('drew weights with --no-train'))
    weights = str(tmp_path / 'initial_weights' / 'seed0.pth')
    for setting, value in (('fixed', 0.61), ('lsconv-phase', 0.64)):
        run_dir = tmp_path / setting / 'seed0'
        (run_dir / '20260101_000000' / 'vis_data').mkdir(parents=True)
        (run_dir / tool.SUITES['digits-grid'].settings[setting][0]).write_text(
            f'load_from = {weights!r}\nrandomness = dict(seed=0)\n')
        (run_dir / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
            '{"loss": 1.0, "time": 0.2, "step": 50}\n'
            f'{{"coco/bbox_mAP": {value}, "coco/bbox_mAP_50": 0.9, "step": 1200}}\n')
    tool.main(['--suite', 'digits-grid', '--no-train', '--seeds', '0', '--other-seeds', '0',
               '--work-dir', str(tmp_path)])
    out = capsys.readouterr().out
    for setting in ('lsconv', 'lsconv-centre', 'dcn'):
        assert f'-- {setting}, seed 0: no finished run trained as planned, left out' in out
    table = (tmp_path / 'detection_benchmark.md').read_text()
    assert '| `lsconv-phase` | `fixed` | 1 | +3.00 |' in table
    assert '(`fixed`) | 1 | 61.0 ± 0.0 | 90.0 | - | - | 0.20 |' in table
    with pytest.raises(SystemExit):
        tool.main(['--suite', 'digits-grid', '--no-train', '--force', '--work-dir',
                   str(tmp_path)])


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shift_consistency_tool_agrees_with_mmdets_metric(tmp_path):
    """tools/shift_consistency.py on a briefly trained detector: twelve shifts, every val
    object counted, and without a shift the mAP mmdet's test loop reports for the same
    checkpoint (its own loading, pipeline and CocoMetric)."""
    config = str(REPO / 'configs' / 'digits' / 'retinanet_r18n-ls-half_digits.py')
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', config=config, iters=30)
    runner = Runner.from_cfg(cfg)
    runner.train()
    reported = 100 * runner.test()['coco/bbox_mAP']
    dumped = tmp_path / 'tiny.py'
    cfg.dump(str(dumped))
    checkpoint = (tmp_path / 'work' / 'last_checkpoint').read_text().strip()
    result = load_tool('shift_consistency').main(
        [str(dumped), checkpoint, '--out', str(tmp_path / 'shifts.json')])
    val = json.loads((tmp_path / 'data' / 'annotations' / 'val.json').read_text())
    assert result['images'] == len(val['images']) == 8
    assert len(result['per_shift']) == 12
    assert result['per_shift'][0]['objects'] == len(val['annotations'])
    assert reported > 0 and result['per_shift'][0]['mAP'] == pytest.approx(reported, abs=0.05)
    assert json.loads((tmp_path / 'shifts.json').read_text())['whole'] == result['whole']


def fake_finished_run(tool, run_dir: Path, setting: str, suite: str, weights: str, seed: int,
                      bbox_map: float) -> None:
    """The files of a finished run that the benchmark reads: config, scalars, checkpoint."""
    (run_dir / '20260101_000000' / 'vis_data').mkdir(parents=True, exist_ok=True)
    (run_dir / tool.SUITES[suite].settings[setting][0]).write_text(
        f'load_from = {weights!r}\nrandomness = dict(seed={seed})\n')
    (run_dir / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
        '{"loss": 1.0, "time": 0.2, "step": 50}\n'
        f'{{"coco/bbox_mAP": {bbox_map}, "coco/bbox_mAP_50": 0.9, "step": 1200}}\n')
    (run_dir / 'iter_1200.pth').write_bytes(b'weights')
    (run_dir / 'last_checkpoint').write_text(str(run_dir / 'iter_1200.pth'))


def test_benchmark_evaluates_each_finished_run_under_shifts_once(tmp_path, monkeypatch):
    """Every finished run is evaluated under shifts once (a retrained run again); the tables
    show each setting's consistency and the paired consistency differences."""
    tool = load_benchmark_tool()
    evaluated = []

    def fake_evaluate(run_dir, setting, label, threads, suite):
        evaluated.append(label)
        consistency = {'fixed': 0.90, 'lsconv-half-frozen': 0.95}[setting]
        seed = int(run_dir[-1])
        Path(run_dir, tool.CONSISTENCY_FILE).write_text(json.dumps({
            'whole': {'consistency': consistency + 0.01 * seed, 'mAP_spread': 2.0},
            'fractional': {'consistency': consistency - 0.1, 'mAP_spread': 3.0}}))

    def fake_train(command, label, work_dir, threads):
        options = dict(o.split('=', 1) for o in command[command.index('--cfg-options') + 1:])
        fake_finished_run(tool, Path(work_dir), label.split(',')[0], 'antialias',
                          options['load_from'], int(options['randomness.seed']), 0.7)

    monkeypatch.setattr(tool, 'evaluate_shifts', fake_evaluate)
    monkeypatch.setattr(tool, 'train', fake_train)
    monkeypatch.setattr(tool, 'write_initial_weights', lambda seed, path, *args: path)
    weights = str(tmp_path / 'initial_weights' / 'seed0.pth')
    fake_finished_run(tool, tmp_path / 'fixed' / 'seed0', 'fixed', 'antialias', weights, 0, 0.6)
    stale = tmp_path / 'lsconv-half-frozen' / 'seed1' / tool.CONSISTENCY_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text('{}')  # of a run that was not trained as planned: retrained, evaluated
    arguments = ['--suite', 'antialias', '--settings', 'fixed', 'lsconv-half-frozen',
                 '--seeds', '0', '1', '--other-seeds', '0', '1', '--work-dir', str(tmp_path)]
    tool.main(arguments)
    assert sorted(evaluated) == ['fixed, seed 0', 'fixed, seed 1', 'lsconv-half-frozen, seed 0',
                                 'lsconv-half-frozen, seed 1']
    tool.main(arguments + ['--no-train'])
    assert len(evaluated) == 4  # kept
    table = (tmp_path / 'detection_benchmark.md').read_text()
    assert '| 60.0 ± 0.0 |' not in table  # two seeds of fixed: 60 and 70
    assert '(`fixed`) | 2 | 65.0 ± 7.1 | 90.0 | 90.5 / 80.0 | 2.0 |' in table
    assert '(`lsconv-half-frozen`) | 2 | 70.0 ± 0.0 | 90.0 | 95.5 / 85.0 | 2.0 |' in table
    # 95 - 90 and 96 - 91 points: +5.00, no spread, so no p-value
    assert '| `lsconv-half-frozen` | `fixed` | 2 | +5.00 |' in table
    assert '| +5.00 [+5.00, +5.00], p - |' in table
    assert (tmp_path / 'detection_benchmark.png').stat().st_size > 0


def test_benchmark_costs_are_measured_interleaved_and_tabled(tmp_path, monkeypatch):
    """--costs runs tools/detector_costs.py per setting, the settings interleaved, takes
    medians over the repeats, keeps them and prints ratios to the baseline."""
    tool = load_benchmark_tool()
    calls = []

    def fake_run(command, **kwargs):
        setting = next(s for s, (config, _) in tool.SUITES['antialias'].settings.items()
                       if command[2].endswith(config))
        calls.append(setting)
        scale = {'fixed': 1.0, 'blurpool': 3.0}[setting]
        repeat = calls.count(setting)
        Path(command[command.index('--out') + 1]).write_text(json.dumps({
            'backbone_macs': int(100 * scale), 'threads': 2,
            'train_s': [0.1 * scale * repeat] * 3, 'inference_s': [0.01 * scale] * 3,
            'network_s': [0.005 * scale * repeat] * 3}))
        return subprocess.CompletedProcess(command, 0, '')

    monkeypatch.setattr(tool.subprocess, 'run', fake_run)
    costs = tool.measure_costs(['fixed', 'blurpool'], 'antialias', str(tmp_path),
                               {'fixed': None, 'blurpool': '/x.pth'}, repeats=2, force=False)
    assert calls == ['fixed', 'blurpool', 'fixed', 'blurpool']
    blur = costs['retinanet_r18n-blurpool_digits.py']
    assert blur['train_s_per_iter'] == pytest.approx(0.45)  # median of 0.3 x 3, 0.6 x 3
    assert blur['inference_ms_per_image'] == pytest.approx(30) and blur['checkpoint'] == '/x.pth'
    tool.measure_costs(['fixed', 'blurpool'], 'antialias', str(tmp_path), {}, 2, False)
    assert len(calls) == 4  # kept in costs.json
    rows = [{'setting': 'fixed'}, {'setting': 'blurpool'}]
    table = '\n'.join(tool.cost_table(rows, 'antialias', costs))
    assert '| `blurpool` | 300 (3.00x) | 0.450 (3.00x) | 30.0 (3.00x) | 22.5 (3.00x) |' in table
    assert '2 threads' in table


def test_detector_costs_counts_the_backbone_and_times_both_steps(tmp_path):
    """tools/detector_costs.py on tiny configs: positive times for each step timed, and the
    backbone's multiply-adds in the order the layers imply (LSConv adds its sampling to the
    plain ResNet's; BlurPool's placement runs the replaced convs at stride 1). A two-stage
    detector's network is timed too (its RPN needs the image's metadata)."""
    tool = load_tool('detector_costs')
    macs = {}
    for name in ('retinanet_r18n_digits_fixed.py', 'retinanet_r18n-ls-half_digits.py',
                 'retinanet_r18n-blurpool_digits.py', 'faster-rcnn_r18n-ls-half_digits.py'):
        cfg = tiny_run_config(tmp_path / name, tmp_path / 'data',
                              config=str(REPO / 'configs' / 'digits' / name))
        dumped = tmp_path / f'tiny-{name}'
        cfg.dump(str(dumped))
        result = tool.main([str(dumped), '--images', '2', '--train-iters', '2', '--warmup', '1',
                            '--out', str(tmp_path / f'{name}.json')])
        assert len(result['inference_s']) == len(result['network_s']) == 2
        assert len(result['train_s']) == 2
        assert result['inference_ms_per_image'] > 0 and result['network_ms_per_image'] > 0
        assert result['train_s_per_iter'] > 0
        assert result['test_size'] == [128, 128]
        macs[name.split('_')[1]] = result['backbone_macs']
    assert macs['r18n'] < macs['r18n-ls-half'] < 1.2 * macs['r18n']
    assert macs['r18n-blurpool'] > 1.2 * macs['r18n']

"""Tiny runs of the study's configs, for tests: a few iterations on a few generated images."""
from pathlib import Path

from mmengine.config import Config

from mmlstride.engine import learned_phases, learned_strides
from mmlstride.ops import BlurConv2d, LSConv2d

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
QUICK = str(CONFIGS / 'digits' / 'retinanet_r18n-ls_digits_quick.py')
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


def write_tiny_config(tmp_path: Path, **changes) -> Path:
    cfg = tiny_run_config(tmp_path / 'work', tmp_path / 'data', iters=3)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.train_cfg.val_interval = 100
    cfg.merge_from_dict(changes)
    path = tmp_path / 'tiny.py'
    cfg.dump(str(path))
    return path


def check_config_builds(path: str) -> None:
    """Builds the model of an mmlstride config and checks it is what its name says: fixed
    strides, DCN or BlurPool, else learned strides with their own optimizer groups and
    shortcuts that follow their block's grid."""
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

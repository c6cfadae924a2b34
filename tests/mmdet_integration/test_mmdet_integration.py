"""LSConv in mmdet: the product's configs build, the install bundles them for mim, a detector
trains with the stride hook (alone, in two gloo processes, through mim), and the
shift-consistency and cost tools on a trained detector."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_tool, require_module

require_module('mmdet')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmlstride  # noqa: E402,F401  (registrations)
from mmlstride.engine import (find_scalars_json, learned_strides,  # noqa: E402
                              read_stride_trajectories)
from projects.lsconv_study.lsconv_study.testing import (  # noqa: E402
    check_config_builds, tiny_run_config, write_tiny_config)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(glob.glob(str(REPO / 'configs' / '**' / '*.py'), recursive=True))
STUDY_CONFIGS = REPO / 'projects' / 'lsconv_study' / 'configs'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, REPO / 'configs'))
def test_every_config_loads_and_builds(path):
    check_config_builds(path)


def test_install_puts_the_configs_in_the_mim_extension():
    """The install links (editable) or copies (wheel) configs/ and tools/ into
    mmlstride/.mim, where mim and mmengine look for a package's configs."""
    mim_dir = Path(mmlstride.__file__).parent / '.mim'
    for config in CONFIGS:
        relative = os.path.relpath(config, REPO / 'configs')
        assert (mim_dir / 'configs' / relative).read_bytes() == Path(config).read_bytes(), relative
    for tool in (REPO / 'tools').glob('*.py'):
        assert (mim_dir / 'tools' / tool.name).read_bytes() == tool.read_bytes(), tool.name
    cfg = Config.fromfile(str(mim_dir / 'configs' / 'lsconv' / 'retinanet_r50-ls_fpn_1x_coco.py'))
    assert cfg.model.backbone.type == 'LSResNet'


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


def test_shift_consistency_tool_agrees_with_mmdets_metric(tmp_path):
    """tools/shift_consistency.py on a briefly trained detector: twelve shifts, every val
    object counted, and without a shift the mAP mmdet's test loop reports for the same
    checkpoint (its own loading, pipeline and CocoMetric)."""
    config = str(STUDY_CONFIGS / 'digits' / 'retinanet_r18n-ls-half_digits.py')
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
                              config=str(STUDY_CONFIGS / 'digits' / name))
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

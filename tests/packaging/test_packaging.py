"""Packaging: distributions built in a checkout carry the configs and leave the checkout's
links; a wheel built from the source distribution installs into a fresh environment, and its
bundled configs serve as bases of a user's own configs."""
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import mmlstride.copy_configs
from conftest import require_module

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(checkout: Path) -> Path:
    """The files a build reads, copied from this checkout (no build products, no .mim)."""
    checkout.mkdir()
    for name in ('setup.py', 'README.md', 'MANIFEST.in'):
        shutil.copy(REPO / name, checkout / name)
    skip = shutil.ignore_patterns('__pycache__', '*.so', '.mim')
    for name in ('mmlstride', 'configs', 'tools', 'csrc', 'requirements'):
        shutil.copytree(REPO / name, checkout / name, ignore=skip)
    return checkout


def test_building_a_distribution_keeps_the_checkouts_config_links(tmp_path):
    """A distribution built in a checkout (here an sdist: no compiler needed) carries copies
    of configs/ and tools/ in mmlstride/.mim, and the checkout gets its links back, so an
    editable install there still follows edits to configs/ and tools/."""
    checkout = copy_checkout(tmp_path / 'checkout')
    result = subprocess.run([sys.executable, 'setup.py', 'sdist', '-d', str(tmp_path / 'dist')],
                            cwd=checkout, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ('configs', 'tools'):
        assert (checkout / 'mmlstride' / '.mim' / name).is_symlink(), name
    with tarfile.open(next((tmp_path / 'dist').glob('*.tar.gz'))) as archive:
        members = [m for m in archive.getmembers() if '/.mim/' in m.name]
    assert any(m.name.endswith('.mim/configs/lsconv/retinanet_r50-ls_fpn_1x_coco.py')
               for m in members)
    assert not any(m.issym() for m in members)


# A user's config in their own directory, on a copied bundled config.
USER_CONFIG = """
_base_ = './bundled/lsconv/retinanet_r50-ls_fpn_1x_coco.py'
train_cfg = dict(max_iters=10)
"""

# Run in the user's directory: loads the user's config (custom_imports imports mmlstride) and
# builds its detector with mmdet; prints where mmlstride came from and the learned strides.
LOAD_AND_BUILD = """
import mmlstride, mmlstride.ops.extension as extension
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
register_all_modules()
cfg = Config.fromfile('my_config.py')
model = MODELS.build(cfg.model)
strides = [n for n, _ in model.named_parameters() if n.endswith('learnable_stride')]
print('package', mmlstride.__file__)
print('extension', extension.EXTENSION_ERROR)
print('iters', cfg.train_cfg.max_iters, 'strides', len(strides))
"""


def load_user_config(user_dir: Path, env: dict, python: str = sys.executable) -> str:
    """Copies the bundled configs into user_dir/bundled with the command the README gives,
    and loads and builds a config there, in fresh processes of ``python``; returns what they
    printed."""
    require_module('mmdet')
    user_dir.mkdir()
    copy = subprocess.run([str(python), '-m', 'mmlstride.copy_configs', 'bundled'],
                          cwd=user_dir, env=env, capture_output=True, text=True, timeout=300)
    assert copy.returncode == 0, copy.stderr[-3000:]
    (user_dir / 'my_config.py').write_text(USER_CONFIG)
    load = subprocess.run([str(python), '-c', LOAD_AND_BUILD], cwd=user_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert load.returncode == 0, load.stderr[-3000:]
    return load.stdout


PURELIB = 'import sysconfig; print(sysconfig.get_path("purelib"))'


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose only other packages are this environment's
    (torch, mmcv, mmdet, ...), seen through a path file; mmlstride is not among them (this
    environment's editable install works through a hook that the path file does not run)."""
    subprocess.run([sys.executable, '-m', 'venv', str(path)], check=True, timeout=300)
    python = path / 'bin' / 'python'
    site = subprocess.run([str(python), '-c', PURELIB], capture_output=True, text=True,
                          check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith('site-packages')]
    Path(site, 'dependencies.pth').write_text('\n'.join(ours) + '\n')
    return python


def test_a_wheel_built_from_the_sdist_installs_and_serves_configs(tmp_path):
    """The source distribution carries what a build needs: a wheel built from it (extension
    compiled) installs into a fresh virtual environment, where the extension loads and the
    bundled configs copy into a user's directory and serve as bases of a user's config."""
    checkout = copy_checkout(tmp_path / 'checkout')
    sdist = subprocess.run([sys.executable, 'setup.py', 'sdist', '-d', str(tmp_path / 'dist')],
                           cwd=checkout, capture_output=True, text=True, timeout=600)
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    archive = next((tmp_path / 'dist').glob('mmlstride-*.tar.gz'))
    build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                            '--no-build-isolation', '-w', str(tmp_path / 'wheels'), str(archive)],
                           capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                           env={**os.environ, 'MAX_JOBS': '2'})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel = next((tmp_path / 'wheels').glob('mmlstride-*.whl'))
    python = fresh_venv(tmp_path / 'venv')
    install = subprocess.run([str(python), '-m', 'pip', 'install', '--no-deps', '--no-index',
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    printed = load_user_config(tmp_path / 'user', env, python)
    assert f'package {tmp_path / "venv"}' in printed, printed
    assert 'extension None' in printed and 'iters 10 strides 3' in printed, printed


def test_an_editable_installs_configs_serve_as_bases_of_a_users_config(tmp_path):
    """The same with this environment's install (editable in the README's set-up)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    printed = load_user_config(tmp_path / 'user', env)
    assert 'iters 10 strides 3' in printed, printed
    copied = sorted(p.relative_to(tmp_path / 'user' / 'bundled').as_posix()
                    for p in (tmp_path / 'user' / 'bundled').rglob('*.py'))
    assert copied == sorted(p.relative_to(REPO / 'configs').as_posix()
                            for p in (REPO / 'configs').rglob('*.py'))


def test_copying_configs_refuses_to_overwrite(tmp_path, capsys):
    """Existing files are kept unless --overwrite, with an error that names one."""
    mmlstride.copy_configs.main([str(tmp_path)])
    target = tmp_path / 'lsconv' / 'retinanet_r50-ls_fpn_1x_coco.py'
    target.write_text('# edited\n')
    with pytest.raises(SystemExit):
        mmlstride.copy_configs.main([str(tmp_path)])
    assert 'exists' in capsys.readouterr().err and target.read_text() == '# edited\n'
    mmlstride.copy_configs.main([str(tmp_path), '--overwrite'])
    assert target.read_text() != '# edited\n'


def test_extension_carries_avx2_clones_of_the_cpu_sampling():
    """Built by GCC >= 12 for x86-64 Linux, the CPU forward's sampling (the blends along h and
    the one-at-a-time interpolation along w) is also compiled for x86-64-v3 (AVX2, FMA) and
    picked at load time (README: How it is computed)."""
    import platform
    nm, compiler = shutil.which('nm'), shutil.which('c++')
    if platform.machine() != 'x86_64' or platform.system() != 'Linux' or not (nm and compiler):
        pytest.skip('needs x86-64 Linux, nm and c++')
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout
    major = subprocess.run([compiler, '-dumpversion'], capture_output=True, text=True).stdout
    if 'clang' in version or int(major.split('.')[0]) < 12:
        pytest.skip('needs GCC >= 12 as c++')
    extension = require_module('mmlstride._ext')
    symbols = subprocess.run([nm, '-C', extension.__file__], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    for function in ('interpolate_w_float', 'interpolate_w_double', 'blend_h_float',
                     'blend_h_double'):
        assert any(function in line and 'clone .arch_x86_64_v3' in line for line in symbols), function

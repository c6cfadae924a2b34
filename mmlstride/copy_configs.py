"""Copies the configs bundled with the installed package into a directory of the user's.

mmengine 0.10.7 resolves ``package::path`` config names only for OpenMMLab's own packages, so
``_base_ = 'mmlstride::...'`` fails. Copied configs are plain files that any entry point
(``mim train mmdet``, mmdet's ``tools/train.py``, ``Config.fromfile``) reads::

    python -m mmlstride.copy_configs mmlstride_configs
    # then, in my_config.py next to it:
    _base_ = './mmlstride_configs/lsconv/retinanet_r50-ls_fpn_1x_coco.py'

Works the same with a wheel (the configs are copied into ``mmlstride/.mim/configs``) and an
editable install (there ``.mim/configs`` links to the checkout's ``configs/``).
"""
import argparse
import shutil
from pathlib import Path
from typing import List, Optional


def bundled_configs_dir() -> Path:
    """The configs directory of the installed package."""
    path = Path(__file__).resolve().parent / '.mim' / 'configs'
    if not path.is_dir():
        raise FileNotFoundError(
            f'{path} expected to hold the bundled configs: install mmlstride with pip or mim '
            '(an install puts configs/ into mmlstride/.mim)')
    return path


def copy_configs(destination: Path, overwrite: bool = False) -> List[Path]:
    """Copies the bundled configs into ``destination`` (created if needed), keeping their
    folders, and returns the config files copied. Refuses to replace existing files unless
    ``overwrite``."""
    source = bundled_configs_dir()
    files = sorted(p for p in source.rglob('*') if p.is_file() and '__pycache__' not in p.parts)
    targets = [destination / p.relative_to(source) for p in files]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f'{existing[0]} exists (and {len(existing) - 1} more): '
                              'pass --overwrite to replace them')
    for file, target in zip(files, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return [t for t in targets if t.suffix == '.py']


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog='python -m mmlstride.copy_configs',
        description='Copy the configs bundled with mmlstride into DEST, so that configs of '
        "your own can name them as _base_ (mmengine 0.10.7 does not resolve 'mmlstride::').")
    parser.add_argument('destination', type=Path, metavar='DEST',
                        help='directory to copy into (created if needed)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing files')
    args = parser.parse_args(argv)
    try:
        configs = copy_configs(args.destination, args.overwrite)
    except (FileExistsError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f'copied {len(configs)} configs from {bundled_configs_dir()} into {args.destination}:')
    for config in configs:
        print(f'  {config}')


if __name__ == '__main__':
    main()

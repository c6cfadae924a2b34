"""The op and the layers need torch alone: with mmengine, mmcv and mmdet unimportable,
``import mmlstride`` works and an LSConv2d runs forward and backward."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WITHOUT_OPENMMLAB = '''
import sys
for name in ('mmengine', 'mmcv', 'mmdet'):
    sys.modules[name] = None  # unimportable: `import name` raises ImportError
import torch
import mmlstride
from mmlstride.ops import BlurConv2d, LSConv2d, ls_conv2d, switch_to_deploy

layer = LSConv2d(3, 4, 3, stride=2, padding=1)
x = torch.randn(2, 3, 9, 9, requires_grad=True)
layer(x).square().sum().backward()
assert layer.learnable_stride.grad is not None and x.grad is not None
assert BlurConv2d(3, 4, 3, stride=2)(x).shape == (2, 4, 4, 4)
loaded = [name for name, module in sys.modules.items()
          if name.split('.')[0] in ('mmengine', 'mmcv', 'mmdet') and module is not None]
assert not loaded, loaded
assert 'mmlstride.openmmlab' not in sys.modules
print('ok')
'''


def test_ops_run_without_openmmlab():
    result = subprocess.run([sys.executable, '-c', WITHOUT_OPENMMLAB], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


def test_import_registers_with_openmmlab():
    """Where mmengine is installed, ``import mmlstride`` registers the layers and the hook."""
    code = ('import mmlstride; from mmengine.registry import HOOKS, MODELS; '
            "assert MODELS.get('LSConv') is mmlstride.LSConv2d; "
            "assert MODELS.get('BlurConv') is not None; "
            "assert HOOKS.get('StrideLoggerHook') is not None; print('ok')")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr

"""The benchmark tool runs end to end on a tiny shape and writes what it promises; the build
script's errors."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_op_writes_table_json_and_chart(tmp_path, capsys):
    tool = load_tool('benchmark_op')
    json_path, png_path = tmp_path / 'out' / 'bench.json', tmp_path / 'bench.png'
    tool.main(['--shapes', '1x4x12', 'r50-s4', '--methods', 'lsconv', 'pytorch', '--repeats', '1',
               '--warmup', '0', '--profile', '--json', str(json_path), '--png', str(png_path)])
    report = json.loads(json_path.read_text())
    records = {(r['shape']['name'], r['method']): r for r in report['records']}
    assert set(records) == {(s, m) for s in ('1x4x12', 'r50-s4')
                            for m in ('lsconv', 'conv2d', 'pytorch')}
    assert all(records[s, 'conv2d']['ratio_to_conv2d'] == 1.0 for s in ('1x4x12', 'r50-s4'))
    for record in records.values():
        assert record['total_ms']['min'] <= record['total_ms']['median'] <= record['total_ms']['max']
        assert record['peak_mib'] >= 0
    assert report['floors_ms']['r50-s4 float32']['gemm'] > 0
    profiled = dict(report['lsconv_profile_ms']['r50-s4 float32'])
    assert {'aten::bmm', 'mmlstride::im2col', 'mmlstride::backward_sampling'} <= set(profiled)
    assert png_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = capsys.readouterr().out
    assert 'r50-s4' in table and 'x conv2d' in table


@pytest.mark.parametrize('bad', ['3x4', 'r50-s9', '2xAx9'])
def test_benchmark_op_rejects_unknown_shapes(bad, capsys):
    tool = load_tool('benchmark_op')
    with pytest.raises(SystemExit):
        tool.main(['--shapes', bad])
    assert 'expected one of' in capsys.readouterr().err


REPO = TOOLS.parent


def run_setup(prelude: str, env_changes: dict) -> subprocess.CompletedProcess:
    """``python setup.py --name`` after ``prelude`` (which may stand in for a CUDA torch)."""
    code = (f'import runpy, sys, torch, torch.utils.cpp_extension as ext\n{prelude}\n'
            "sys.argv = ['setup.py', '--name']\nrunpy.run_path('setup.py', run_name='__main__')")
    env = dict(os.environ, **env_changes)
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)


def test_setup_force_cuda_without_a_cuda_torch_names_both():
    result = run_setup('torch.version.cuda = None', {'FORCE_CUDA': '1'})
    assert result.returncode != 0
    assert 'FORCE_CUDA=1 expected a CUDA build of torch and the CUDA toolkit; found ' \
           'torch.version.cuda=None' in result.stderr


def test_setup_cuda_home_without_the_toolkit(tmp_path):
    result = run_setup(f"torch.version.cuda = '13.0'\next.CUDA_HOME = {str(tmp_path)!r}",
                       {'FORCE_CUDA': '1'})
    assert result.returncode != 0
    assert f'CUDA_HOME={tmp_path} expected the CUDA toolkit (its lib64/libcudart.so is ' \
           'missing)' in result.stderr

"""The benchmark, launch-count and deploy tools run end to end and print and write what they
promise; the build script's errors and default CUDA architectures."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_tool, needs_torch_for, require, require_module
from mmlstride.benchmarks import launches
from mmlstride.benchmarks.timing import interleaved_ratio
from mmlstride.torch_compat import torch_version

TOOLS = Path(__file__).resolve().parents[2] / 'tools'


def test_benchmark_op_writes_table_json_and_chart(tmp_path, capsys):
    tool = load_tool('benchmark_op')
    json_path, png_path = tmp_path / 'out' / 'bench.json', tmp_path / 'bench.png'
    tool.main(['--shapes', '1x4x12', 'r50-s4', '--methods', 'lsconv', 'pytorch', '--repeats', '1',
               '--warmup', '0', '--profile', '--json', str(json_path), '--png', str(png_path)])
    report = json.loads(json_path.read_text())
    records = {(r['shape']['name'], r['method']): r for r in report['records']}
    assert set(records) == {(s, m) for s in ('1x4x12', 'r50-s4')
                            for m in ('lsconv', 'conv2d', 'pytorch')}
    assert all(records[s, 'conv2d'][ratio] == 1.0 for s in ('1x4x12', 'r50-s4')
               for ratio in ('ratio_to_conv2d', 'inference_ratio_to_conv2d'))
    for record in records.values():
        assert record['total_ms']['min'] <= record['total_ms']['median'] <= record['total_ms']['max']
        assert record['peak_mib'] >= 0 and record['inference_ms']['median'] > 0
    assert report['floors_ms']['r50-s4 float32']['gemm'] > 0
    profiled = dict(report['lsconv_profile_ms']['r50-s4 float32'])
    assert {'aten::bmm', 'mmlstride::im2col', 'mmlstride::backward_sampling'} <= set(profiled)
    assert png_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = capsys.readouterr().out
    assert 'r50-s4' in table and 'x conv2d' in table and 'no_grad fwd ms' in table


def test_benchmark_op_forward_loop_prints_both_ratios(capsys):
    """--forward-loop: per shape, LSConv's no_grad forward over F.conv2d's, warm and flushed."""
    tool = load_tool('benchmark_op')
    tool.main(['--forward-loop', '--shapes', '1x4x12', '2x3x9x14', '--repeats', '2'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('no_grad forward, lsconv / conv2d, median of 2 calls')
    for line, name in zip(lines[1:], ('1x4x12', '2x3x9x14')):
        words = line.split()
        assert words[0] == name and words[1] == 'warm' and words[3] == 'flushed'
        assert float(words[2].rstrip('x')) > 0 and float(words[4].rstrip('x')) > 0
    calls = []
    ratio = interleaved_ratio(lambda: calls.append(1), lambda: calls.append(2), 3)
    assert calls == [1, 2] * 3 and ratio > 0


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


def load_setup():
    """setup.py as a module, its functions without the build (main() runs only as __main__)."""
    spec = importlib.util.spec_from_file_location('mmlstride_setup', REPO / 'setup.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRE_BLACKWELL = '7.5;8.0;8.6;8.9;9.0+PTX'
WITH_BLACKWELL = '7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX'
NVCC_12_4_ARCHS = [f'compute_{v}' for v in (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89,
                                            90)]
NVCC_12_8_ARCHS = NVCC_12_4_ARCHS + ['compute_100', 'compute_101', 'compute_120']
NVCC_13_0_ARCHS = [f'compute_{v}' for v in (75, 80, 86, 87, 88, 89, 90, 100, 110, 103, 120,
                                            121)]


@pytest.mark.parametrize('nvcc_archs,expected', [
    (NVCC_12_4_ARCHS, PRE_BLACKWELL),
    (NVCC_12_8_ARCHS, WITH_BLACKWELL),
    (NVCC_13_0_ARCHS, WITH_BLACKWELL),
    ([], PRE_BLACKWELL),
], ids=['cuda-12.4', 'cuda-12.8', 'cuda-13.0', 'nvcc-not-run'])
def test_default_cuda_arch_list(nvcc_archs, expected):
    """Without a GPU the build covers Turing to what nvcc supports, Blackwell from CUDA 12.8,
    PTX on the newest; the Turing-to-Hopper list when nvcc could not be asked."""
    assert load_setup().default_cuda_arch_list(nvcc_archs) == expected


def test_nvcc_gpu_archs_when_nvcc_cannot_run(tmp_path):
    """A missing nvcc gives no architectures (the default list), not an error."""
    assert load_setup().nvcc_gpu_archs(str(tmp_path / 'nvcc')) == []


def test_default_cuda_arch_list_from_the_real_nvcc():
    """The nvcc on PATH answers --list-gpu-arch as parsed, and one that knows Blackwell
    (CUDA >= 12.8) gets it."""
    nvcc = shutil.which('nvcc')
    require(nvcc is not None, 'nvcc (the CUDA toolkit)')
    setup_module = load_setup()
    archs = setup_module.nvcc_gpu_archs(nvcc)
    assert 'compute_90' in archs
    expected = WITH_BLACKWELL if 'compute_120' in archs else PRE_BLACKWELL
    assert setup_module.default_cuda_arch_list(archs) == expected


@pytest.mark.skipif(torch_version() < (2, 13), reason='torch.profiler of older torch loses the '
                    'parents of some events (seen on 2.1.2), which the counts are made from')
def test_count_launches_sees_gemms_in_place_with_the_bias(capsys):
    """tools/count_launches.py counts the host code's memory-touching ATen calls: for a tile
    that is one whole image the forward GEMM adds the bias and writes the output in place and
    the backward reads grad_output in place (no copy, no separate bias add); a tile of two
    images goes through a buffer (one copy each way). The layers' weights are larger than
    their inputs, so the CPU forward takes the channel-major columns of the CUDA path."""
    one_image = launches.count('one image', 1, 16, 6, 'cpu')['calls']
    assert one_image['aten::baddbmm'] == 1 and one_image['aten::bmm'] == 1
    assert 'aten::copy_' not in one_image and 'aten::add_' not in one_image, one_image
    two_images = launches.count('two images', 2, 16, 6, 'cpu')['calls']
    assert two_images['aten::copy_'] == 2 and 'aten::add_' not in two_images, two_images
    load_tool('count_launches').main([])
    assert 'r50-s2' in capsys.readouterr().out


@needs_torch_for('the dynamo ONNX exporter')
def test_deploy_exports_a_detector_that_onnxruntime_runs(tmp_path, capsys):
    """tools/deploy.py on a digits RetinaNet checkpoint (LSConv, half the strides moved off
    nominal): the layers at whole strides export as plain convolutions, the others sampled;
    the ONNX model runs in ONNX Runtime with PyTorch's outputs, finds the same detections, and
    the tool writes its files and figures and times both runtimes."""
    for name in ('onnx', 'onnxruntime', 'onnxscript', 'mmdet'):
        require_module(name)
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    from mmlstride.ops import LSConv2d
    config = str(TOOLS.parent / 'projects' / 'lsconv_study' / 'configs' / 'digits'
                 / 'retinanet_r18n-ls_digits_quick.py')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    detector = MODELS.build(Config.fromfile(config).model)
    with torch.no_grad():
        for k, layer in enumerate(m for m in detector.modules()
                                  if isinstance(m, LSConv2d) and m.stride_leader is None):
            whole = k % 2 == 0  # every other layer (and its shortcut) at stride 2
            layer.learnable_stride.copy_(torch.tensor(
                [2.0, 2.0] if whole else [1.8 + 0.05 * k, 2.2 - 0.05 * k]))
    checkpoint = tmp_path / 'detector.pth'
    torch.save({'state_dict': detector.state_dict()}, checkpoint)
    load_tool('deploy').main([config, str(checkpoint), '--out', str(tmp_path / 'out'),
                              '--images', '2', '--repeats', '1'])
    printed = capsys.readouterr().out
    difference = float(re.search(r"largest value: ([-+.e0-9]+)", printed).group(1))
    assert difference < 1e-4, printed
    pairs = re.search(r'ONNX Runtime\): (.*)', printed).group(1).split(', ')
    assert all(a == b for a, b in (pair.split('/') for pair in pairs)), printed
    for name in ('detector.onnx', 'detector_fixed_strides.onnx', 'detections.jpg'):
        assert (tmp_path / 'out' / name).stat().st_size > 0
    total, whole = map(int, re.search(r'(\d+) LSConv layers, (\d+) at whole', printed).groups())
    assert 0 < whole < total, printed
    import onnx
    operators = [n.op_type for n in onnx.load(tmp_path / 'out' / 'detector.onnx').graph.node]
    assert operators.count('GridSample') == total - whole  # one per sampled layer
    assert re.search(r'PyTorch eager CPU.*median ratio [.0-9]+', printed), printed


CUDA_CHECK = TOOLS / 'cuda_check.sh'
GPU_VISIBLE = shutil.which('nvidia-smi') is not None and subprocess.run(
    ['nvidia-smi', '-L'], capture_output=True).returncode == 0


def run_cuda_check(tmp_path, *args, **env_vars):
    env = dict(os.environ, OUT=str(tmp_path / 'out'), PYTHON=sys.executable, **env_vars)
    return subprocess.run(['bash', str(CUDA_CHECK), *args], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.mark.skipif(GPU_VISIBLE, reason='a GPU is visible: the dry run is for machines without')
def test_cuda_check_dry_run_builds_then_stops(tmp_path):
    """With a compiler that links the C++ runtime statically, as the GPU image's did (its
    extension then lost the numbers of its error messages, or crashed): setup.py links it
    dynamically all the same, and the script checks the errors of what it built."""
    compiler = tmp_path / 'static-runtime-c++'
    # torch < 2.4 asks the compiler for its version (-v alone), which the flag would fail.
    compiler.write_text('#!/bin/sh\n[ "$*" = -v ] && exec c++ -v\nexec c++ "$@" -static-libstdc++\n')
    compiler.chmod(0o755)
    result = run_cuda_check(tmp_path, '--dry-run', CXX=str(compiler))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'dry run: stopped after the build step' in result.stdout
    out = tmp_path / 'out'
    assert str(compiler) in (out / 'build.log').read_text()
    summary = (out / 'summary.txt').read_text().splitlines()
    assert [line.split('  ')[0] for line in summary] == [
        'build', 'errors raised with their values', 'sanitizer cases on the CPU',
        'benchmark float32, TF32 off', 'benchmark float32, TF32 on', 'benchmark bfloat16',
        'fixed-grid benchmark', 'backbone step, 800 x 1333']
    assert all(' passed ' in line for line in summary), summary
    # The speed steps ran at toy sizes on the CPU and wrote their results.
    for name in ('benchmark_fp32', 'benchmark_tf32', 'benchmark_bf16', 'fixed_grid', 'backbone'):
        assert json.loads((out / f'{name}.json').read_text()), name
    assert json.loads((out / 'backbone.json').read_text())['ms'].keys() == {'float32',
                                                                             'bfloat16'}
    assert list((out / 'dry_run_build' / 'mmlstride').glob('_ext*.so'))
    assert 'torch' in (out / 'environment.txt').read_text()
    assert '14 calls on cpu, 0 failures' in (out / 'sanitizer.log').read_text()


@pytest.mark.skipif(GPU_VISIBLE, reason='a GPU is visible')
@pytest.mark.parametrize('args', [(), ('--speed', )], ids=['all', 'speed'])
def test_cuda_check_without_a_gpu_says_so(tmp_path, args):
    result = run_cuda_check(tmp_path, *args)
    assert result.returncode == 1
    assert 'no GPU visible' in result.stderr and '--dry-run' in result.stderr


def test_cuda_check_rejects_an_unknown_argument(tmp_path):
    result = run_cuda_check(tmp_path, '--dryrun')
    assert result.returncode == 2 and \
        "usage: bash tools/cuda_check.sh [--dry-run | --speed]; got '--dryrun'" \
        in result.stderr


def test_cuda_sanitizer_cases_compare_with_float64(monkeypatch, capsys):
    tool = load_tool('cuda_sanitizer_cases')
    assert tool.main(['--device', 'cpu']) == 0
    assert '14 calls on cpu, 0 failures' in capsys.readouterr().out
    op = tool.compiled_op
    monkeypatch.setattr(tool, 'compiled_op', lambda *args: op(*args) * (1 + 1e-3))
    assert tool.main(['--device', 'cpu']) == 1
    assert 'FAILED float32 all output: error 1.00e-03' in capsys.readouterr().out


def test_mim_installs_without_a_resolver_error(tmp_path):
    """tools/install_mim.sh, as the set-up runs it, in a fresh virtual environment: mim
    works, and pip prints no ERROR line about openmim's left-out opendatalab."""
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
    env = {**os.environ, 'PATH': f'{venv / "bin"}:{os.environ["PATH"]}',
           'VIRTUAL_ENV': str(venv), 'PIP_DISABLE_PIP_VERSION_CHECK': '1'}
    env.pop('PYTHONPATH', None)
    result = subprocess.run(['bash', str(REPO / 'tools' / 'install_mim.sh')], env=env,
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not [line for line in output.splitlines() if line.startswith('ERROR')], output
    version = subprocess.run([str(venv / 'bin' / 'mim'), '--version'], env=env,
                             capture_output=True, text=True, timeout=300)
    assert version.stdout.strip() == 'mim, version 0.3.9', version.stdout + version.stderr


def test_deploy_stacks_the_labels_of_boxes_on_one_object():
    """The detections picture writes each label at its box's corner, moved down past labels
    already written there, so that labels of overlapping boxes stay readable."""
    numpy = pytest.importorskip('numpy')
    from mmlstride.deployment import label_positions
    corners = numpy.array([[10.0, 20.0], [11.0, 21.0], [12.0, 19.0], [100.0, 20.0]])
    assert label_positions(corners, 16) == [(10.0, 20.0), (11.0, 37.0), (12.0, 67.0),
                                            (100.0, 20.0)]


@needs_torch_for('the dynamo ONNX exporter')
def test_benchmark_export_checks_and_times_every_form(tmp_path, capsys):
    """tools/benchmark_export.py exports the network in every form, each matching PyTorch at
    another batch and size; a layer switched to deploy at stride 2 is a plain Conv, at the
    half phase an AveragePool and a Conv, else a GridSample; it writes its table and chart."""
    for name in ('onnx', 'onnxruntime', 'onnxscript', 'matplotlib'):
        require_module(name)
    rows = load_tool('benchmark_export').main(
        ['--out', str(tmp_path), '--repeats', '1', '--warmup', '0', '--no-layers',
         '--batch', '1', '--size', '32'])
    assert len(rows) == 7 and all(row['difference'] < 1e-4 for row in rows)
    operators = {(row['setting'], row['form']): row['operators'] for row in rows}
    assert operators['stride-2', 'deploy'] == ['Conv', 'Relu']
    assert {'AveragePool', 'Conv'} <= set(operators['half-phase', 'deploy'])
    assert 'GridSample' not in operators['half-phase', 'deploy']
    for setting in ('stride-2', 'half-phase', 'learned'):
        assert 'GridSample' in operators[setting, 'grid_sample']
    assert 'GridSample' in operators['learned', 'deploy']
    assert '| `half-phase` | `deploy` |' in capsys.readouterr().out
    for name in ('benchmark_export.json', 'benchmark_export.md', 'benchmark_export.png'):
        assert (tmp_path / name).stat().st_size > 0


def test_benchmark_real_size_times_both_detectors_in_processes(tmp_path):
    """tools/benchmark_real_size.py at a small size: the plain detector has no LSConv and the
    same other parameters, each (detector, step) ran in its own process, and the table has
    positive times and memory with ratios."""
    require_module('mmdet')
    tool = load_tool('benchmark_real_size')
    from mmengine.registry import init_default_scope

    from mmlstride.benchmarks.real_size import build_detector
    from mmlstride.ops import LSConv2d
    init_default_scope('mmdet')
    plain, _ = build_detector(tool.DEFAULT_CONFIG, 'plain')
    lsconv, _ = build_detector(tool.DEFAULT_CONFIG, 'lsconv')
    assert not any(isinstance(m, LSConv2d) for m in plain.modules())
    assert sum(isinstance(m, LSConv2d) for m in lsconv.modules()) == 6
    assert {k for k, _ in plain.named_parameters()} == {
        k for k, _ in lsconv.named_parameters() if 'learnable_' not in k}
    report = tool.main(['--size', '96', '128', '--batch', '1', '--repeats', '1', '--iters', '1',
                        '--warmup', '0', '--out', str(tmp_path / 'real.json')])
    assert len(report['results']) == 4
    for step in ('train', 'inference'):
        for variant in ('plain', 'lsconv'):
            assert report['table'][step][variant]['seconds'] > 0
            assert report['table'][step][variant]['peak_mib'] > 0
    assert json.loads((tmp_path / 'real.json').read_text())['size'] == [96, 128]


def test_cxx20_raises_the_standard_an_older_build_asks_for(tmp_path):
    """tools/cxx20.sh (mmcv's build against a torch that needs C++20) compiles C++20 code given
    -std=c++17, and passes every other argument through as it is."""
    require(shutil.which('c++') is not None, 'a C++ compiler (c++)')
    source = tmp_path / 'cxx20.cpp'
    source.write_text('#include <string_view>\nstatic_assert(__cplusplus >= 202002L);\n'
                      'bool f(std::string_view s) { return s.starts_with("a b"); }\n')
    wrapper = str(TOOLS / 'cxx20.sh')
    result = subprocess.run([wrapper, '-std=c++17', '-c', str(source), '-o',
                             str(tmp_path / 'cxx20 out.o')], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'cxx20 out.o').is_file()
    plain = subprocess.run(['c++', '-std=c++17', '-c', str(source), '-o', str(tmp_path / 'x.o')],
                           capture_output=True, text=True)
    assert plain.returncode != 0

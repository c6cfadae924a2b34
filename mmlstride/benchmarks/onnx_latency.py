"""The ONNX export benchmark (``tools/benchmark_export.py``): a network of three strided 3x3
convolutions and each of its strided layers alone, as nn.Conv2d and as LSConv2d at three settings
of stride and phase in each export form, exported, checked against PyTorch and timed in ONNX
Runtime, and the table and chart of their latencies relative to nn.Conv2d."""
import os
import statistics
import time
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..deployment import export_onnx, largest_relative_difference, onnx_session, run_session
from ..ops import LSConv2d, switch_to_deploy

CHANNELS = (32, 64, 128, 256)
# name: (learned stride, phase, description)
SETTINGS = {
    'stride-2': ((2.0, 2.0), None, 'stride 2 (untrained), no phase'),
    'half-phase': ((2.0, 2.0), 0.5, 'stride 2, phase 0.5 (the fixed half phase)'),
    'learned': ((1.87, 2.13), (0.3, -0.2), 'strides (1.87, 2.13), phase (0.3, -0.2)'),
}
FORMS = ('deploy', 'grid_sample')
OPSET = 18


def strided(in_channels: int, out_channels: int, setting: Optional[str]) -> nn.Conv2d:
    """One strided 3x3 layer: nn.Conv2d for ``setting`` None, else LSConv2d at the setting."""
    if setting is None:
        return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    stride, phase, _ = SETTINGS[setting]
    return LSConv2d(in_channels, out_channels, 3, stride=2, padding=1, initial_stride=stride,
                    phase=phase)


def network(setting: Optional[str]) -> nn.Sequential:
    """The three-layer network, each strided conv followed by a stride-1 conv; the same
    weights for every setting."""
    torch.manual_seed(0)
    layers: List[nn.Module] = []
    for in_channels, out_channels in zip(CHANNELS, CHANNELS[1:]):
        layers += [strided(in_channels, out_channels, setting), nn.ReLU(),
                   nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def layer_input(index: int, batch: int, size: int) -> Tuple[int, int, int, int]:
    """The input shape of strided layer ``index`` inside the network for a batch of
    ``batch`` at ``size`` x ``size``."""
    return (batch, CHANNELS[index], size >> index, size >> index)


def export(model: nn.Module, example: torch.Tensor, path: str, form: str) -> None:
    """Exports ``model`` with dynamic batch, height and width; with ``form`` 'deploy' its
    LSConv layers are switched to deploy first."""
    if form == 'deploy':
        switch_to_deploy(model)
    export_onnx(model, example, path, OPSET, min_size=8)


def operators(path: str) -> List[str]:
    """The ONNX operators of the model at ``path``, sorted."""
    import onnx
    return sorted({node.op_type for node in onnx.load(path).graph.node})


def cases(layers: bool, batch: int,
          size: int) -> List[Tuple[str, str, str, nn.Module, Tuple[int, ...]]]:
    """(model, setting, form, module, input shape) of every model to time: the network and,
    with ``layers``, each strided layer alone."""
    found = []
    models = [('network', lambda setting: network(setting), layer_input(0, batch, size))]
    if layers:
        for k in range(3):
            models.append((f'layer {k + 1}', lambda setting, k=k: network(setting)[4 * k],
                           layer_input(k, batch, size)))
    for name, build, shape in models:
        found.append((name, 'nn.Conv2d', 'conv', build(None), shape))
        for setting in SETTINGS:
            for form in FORMS:
                found.append((name, setting, form, build(setting), shape))
    return found


def measure(repeats: int, warmup: int, layers: bool, batch: int, size: int,
            directory: str) -> List[dict]:
    """Exports and checks every case (on another batch and size than the traced one), then
    times all of them interleaved."""
    rows, sessions, inputs = [], [], []
    for k, (name, setting, form, module, shape) in enumerate(cases(layers, batch, size)):
        path = os.path.join(directory, f'{k}.onnx')
        example = torch.randn(shape)
        export(module, example, path, form)
        session = onnx_session(path)
        other = torch.randn(shape[0] + 1, shape[1], shape[2] - 3, shape[3] + 5)
        with torch.no_grad():
            expected = module(other)
        difference = largest_relative_difference(run_session(session, other), [expected])
        rows.append(dict(model=name, setting=setting, form=form, difference=difference,
                         operators=operators(path), times=[]))
        sessions.append(session)
        inputs.append({session.get_inputs()[0].name: example.numpy()})
        print(f'exported {name:8s} {setting:10s} {form:11s} difference {difference:.1e}',
              flush=True)
    for repeat in range(warmup + repeats):
        for row, session, feed in zip(rows, sessions, inputs):
            start = time.perf_counter()
            session.run(None, feed)
            if repeat >= warmup:
                row['times'].append(time.perf_counter() - start)
    for row in rows:
        row['median_ms'] = 1000 * statistics.median(row['times'])
        floor = next(r for r in rows if r['model'] == row['model'] and r['form'] == 'conv')
        row['ratio'] = statistics.median(row['times']) / statistics.median(floor['times'])
    return rows


def markdown(rows: List[dict]) -> List[str]:
    """A table: one line per setting and form, the network's median latency and ratio to
    nn.Conv2d, and each layer's ratio where measured."""
    models = list(dict.fromkeys(r['model'] for r in rows))
    head = ['setting', 'form', 'network ms', 'network ratio'] + [f'{m} ratio' for m in models[1:]]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in (r for r in rows if r['model'] == 'network'):
        cells = [f'`{row["setting"]}`', f'`{row["form"]}`', f'{row["median_ms"]:.1f}',
                 f'{row["ratio"]:.2f}x']
        for model in models[1:]:
            match = next(r for r in rows if r['model'] == model and
                         r['setting'] == row['setting'] and r['form'] == row['form'])
            cells.append(f'{match["ratio"]:.2f}x')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def figure(rows: List[dict], path: str) -> None:
    """Bar chart of the network's ratio to nn.Conv2d per setting and form."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    network_rows = [r for r in rows if r['model'] == 'network' and r['form'] != 'conv']
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colours = {'deploy': 'tab:green', 'grid_sample': 'tab:orange'}
    for k, row in enumerate(network_rows):
        ax.bar(k, row['ratio'], color=colours[row['form']])
        ax.text(k, row['ratio'], f'{row["ratio"]:.2f}', ha='center', va='bottom', fontsize=8)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.axhline(1.3, color='grey', linestyle='--', linewidth=0.8)
    ax.set_xticks(range(len(network_rows)))
    ax.set_xticklabels([f'{r["setting"]}\n{r["form"]}' for r in network_rows], fontsize=7)
    ax.set_ylabel('latency / nn.Conv2d')
    ax.set_title('ONNX Runtime (CPU), three strided layers', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Reading a run's files back: the newest scalars.json of a work_dir, the stride trajectories
in it, and a checkpoint's weights, bare or as mmengine saves them."""
import json
import os
import sys

import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')

from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

from mmlstride.engine import (find_scalars_json, load_config, load_weights,  # noqa: E402
                              read_stride_trajectories)


def write_scalars(path, lines, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
    os.utime(path, (mtime, mtime))


def test_the_newest_vis_data_scalars_json_is_found(tmp_path):
    assert find_scalars_json(str(tmp_path)) is None
    # Newest by modification time, not by name; other scalars.json and empty vis_data ignored.
    write_scalars(tmp_path / '20260101_000000' / 'vis_data' / 'scalars.json', [], 2000)
    write_scalars(tmp_path / '20250101_000000' / 'vis_data' / 'scalars.json', [], 3000)
    write_scalars(tmp_path / 'elsewhere' / 'scalars.json', [], 4000)
    (tmp_path / '20270101_000000' / 'vis_data').mkdir(parents=True)
    assert find_scalars_json(str(tmp_path)) == str(
        tmp_path / '20250101_000000' / 'vis_data' / 'scalars.json')


def test_trajectories_per_layer_and_axis(tmp_path):
    path = tmp_path / 'scalars.json'
    write_scalars(path, [
        {'step': 10, 'loss': 1.0, 'stride/backbone.layer2/h': 2.0, 'stride/backbone.layer2/w': 1.9},
        {'step': 20, 'stride/backbone.layer2/h': 2.1, 'stride/outer/inner/w': 1.5,
         'phase/backbone.layer2/h': 0.25},
    ], 1000)
    assert read_stride_trajectories(str(path)) == {
        'backbone.layer2': {'h': [(10, 2.0), (20, 2.1)], 'w': [(10, 1.9)]},
        'outer/inner': {'h': [], 'w': [(20, 1.5)]},  # a name holding '/' keeps it
    }
    assert read_stride_trajectories(str(path), prefix='phase/') == {
        'backbone.layer2': {'h': [(20, 0.25)], 'w': []}}


@pytest.mark.parametrize('wrapped', [True, False], ids=['mmengine', 'bare'])
def test_weights_load_from_a_checkpoint_or_a_bare_state_dict(tmp_path, wrapped):
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    state = source.state_dict()
    # mmengine's checkpoints pickle the message hub's buffers, which weights_only refuses.
    hub = {'log_scalars': {'loss': HistoryBuffer([1.0, 0.5], [1, 1])}}
    torch.save({'state_dict': state, 'message_hub': hub} if wrapped else state,
               tmp_path / 'w.pth')
    load_weights(target, str(tmp_path / 'w.pth'))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())


def test_config_loads_with_options_scope_and_custom_imports(tmp_path, monkeypatch):
    """As the tools load a config: --cfg-options merged, the config's default scope set (mmdet
    when it names none), its custom_imports imported."""
    (tmp_path / 'imported_by_config.py').write_text('IMPORTED = True\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'imported_by_config', raising=False)
    (tmp_path / 'scoped.py').write_text(
        "default_scope = 'mmengine'\nmodel = dict(depth=50, width=8)\n"
        "custom_imports = dict(imports=['imported_by_config'], allow_failed_imports=False)\n")
    cfg = load_config(str(tmp_path / 'scoped.py'), {'model.depth': 18})
    assert cfg.model == dict(depth=18, width=8)
    assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    assert sys.modules['imported_by_config'].IMPORTED
    (tmp_path / 'plain.py').write_text('model = dict(depth=50)\n')
    assert load_config(str(tmp_path / 'plain.py')).model == dict(depth=50)
    assert DefaultScope.get_current_instance().scope_name == 'mmdet'

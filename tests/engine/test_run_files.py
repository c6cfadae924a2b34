"""Reading a run's files back: the newest scalars.json of a work_dir, the stride trajectories
in it, and a checkpoint's weights, bare or as mmengine saves them."""
import json
import os

import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')

from mmlstride.engine import find_scalars_json, load_weights, read_stride_trajectories  # noqa: E402


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
    torch.save({'state_dict': state, 'message_hub': {'a': 1}} if wrapped else state,
               tmp_path / 'w.pth')
    load_weights(target, str(tmp_path / 'w.pth'))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())

"""Loading a detector's config and trained weights as the tools do."""
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """The config at ``path`` with ``options`` (``--cfg-options``, parsed by mmengine's
    DictAction) merged in, its default scope set and its ``custom_imports`` imported (by
    mmengine's ``Config.fromfile``)."""
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options or {})
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return cfg


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Loads a checkpoint's ``state_dict`` (or a bare state dict) into ``model``. mmengine's
    training checkpoints also pickle the runner's logging state, which torch.load's default
    (weights only) refuses: the file is read in full, so load only checkpoints you trust."""
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    model.load_state_dict(state.get('state_dict', state))

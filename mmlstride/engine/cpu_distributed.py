"""Distributed training on CPU-only machines (gloo) through mmengine's Runner.

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and wraps
the model with ``device_ids=[LOCAL_RANK]``; both fail without a GPU. Starting
the gloo process group first (the Runner then skips its own set-up) and
wrapping with :class:`CPUDistributedDataParallel` avoids both.
"""
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's MMDistributedDataParallel for a model on CPU: ``device_ids`` is dropped
    (DDP takes none for CPU modules)."""

    def __init__(self, module, device_ids=None, **kwargs) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def setup_cpu_distributed(cfg: Config) -> None:
    """Starts the gloo process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR...) and makes the Runner wrap the model with CPUDistributedDataParallel."""
    if torch.cuda.is_available():
        raise RuntimeError('setup_cpu_distributed is for machines without a GPU; expected '
                           "mmengine's own launcher set-up here")
    cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper['type'] = 'CPUDistributedDataParallel'
    cfg.model_wrapper_cfg = wrapper

"""Training and analysis utilities (importing registers them in mmengine's HOOKS and
MODEL_WRAPPERS, and LSConv's multiply-add count in mmengine.analysis)."""
from . import complexity  # noqa: F401  (registration)
from .detector_files import load_config, load_weights
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .stride_logger_hook import (PHASE_PREFIX, StrideLoggerHook, find_scalars_json,
                                 grid_states, learned_phases, learned_strides,
                                 read_stride_trajectories)

__all__ = ['load_config', 'load_weights', 'CPUDistributedDataParallel', 'setup_cpu_distributed', 'StrideLoggerHook',
           'find_scalars_json', 'grid_states', 'learned_phases', 'learned_strides', 'read_stride_trajectories',
           'PHASE_PREFIX']

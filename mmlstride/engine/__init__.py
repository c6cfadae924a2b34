"""Training and analysis utilities on mmengine (registered by :mod:`mmlstride.openmmlab`)."""
from .detector_files import load_config, load_weights
from .cpu_distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .stride_logger_hook import (PHASE_PREFIX, StrideLoggerHook, find_scalars_json,
                                 grid_states, learned_phases, learned_strides,
                                 read_stride_trajectories)

__all__ = ['load_config', 'load_weights', 'CPUDistributedDataParallel', 'setup_cpu_distributed', 'StrideLoggerHook',
           'find_scalars_json', 'grid_states', 'learned_phases', 'learned_strides', 'read_stride_trajectories',
           'PHASE_PREFIX']

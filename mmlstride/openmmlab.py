"""mmlstride's parts in OpenMMLab's registries, so that configs name them.

In mmengine's root registries (mmcv's ``build_conv_layer`` and every OpenMMLab library look
there): ``LSConv`` and ``BlurConv`` in ``MODELS`` (``conv_cfg=dict(type='LSConv')``),
``StrideLoggerHook`` in ``HOOKS``, ``CPUDistributedDataParallel`` in ``MODEL_WRAPPERS``, and
LSConv's multiply-add rule in ``mmengine.analysis``. Where mmdet is installed, also in mmdet's:
``LSResNet`` and ``BlurResNet`` in ``MODELS``, and shift consistency as a metric a config can
name (``ShiftConsistencyMetric`` in ``METRICS``, the ``ShiftedDataset`` wrapper in
``DATASETS``, the ``ShiftContent`` pipeline step in ``TRANSFORMS``).

``import mmlstride`` imports this module where mmengine is installed; the op and the layers
(:mod:`mmlstride.ops`) need torch alone.
"""
from mmengine.registry import HOOKS, MODEL_WRAPPERS, MODELS

from . import importable
from .engine import complexity
from .engine.cpu_distributed import CPUDistributedDataParallel
from .engine.stride_logger_hook import StrideLoggerHook
from .ops import BlurConv2d, LSConv2d

MODELS.register_module('LSConv', module=LSConv2d)
MODELS.register_module('BlurConv', module=BlurConv2d)
HOOKS.register_module(module=StrideLoggerHook)
MODEL_WRAPPERS.register_module(module=CPUDistributedDataParallel)
complexity.register()

if importable('mmdet'):
    from mmdet.registry import DATASETS as MMDET_DATASETS
    from mmdet.registry import METRICS as MMDET_METRICS
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS

    from .evaluation.shift_metric import ShiftConsistencyMetric
    from .evaluation.shifted_dataset import ShiftContent, ShiftedDataset
    from .models import BlurResNet, LSResNet

    MMDET_MODELS.register_module(module=LSResNet)
    MMDET_MODELS.register_module(module=BlurResNet)
    MMDET_DATASETS.register_module(module=ShiftedDataset)
    MMDET_TRANSFORMS.register_module(module=ShiftContent)
    MMDET_METRICS.register_module(module=ShiftConsistencyMetric)

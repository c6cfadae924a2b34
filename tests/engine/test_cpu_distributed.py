"""The CPU distributed set-up's effect on a config, in one process (the two-process gloo run is
tests/mmdet_integration's test_distributed_gloo_keeps_strides_identical)."""
import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.config import Config  # noqa: E402

from mmlstride.engine import cpu_distributed  # noqa: E402


@pytest.mark.parametrize('given', [dict(), dict(env_cfg=dict(dist_cfg=dict(timeout=60)),
                                                model_wrapper_cfg=dict(find_unused_parameters=True))])
def test_config_gets_gloo_and_the_cpu_wrapper(monkeypatch, given):
    started = []
    monkeypatch.setattr(cpu_distributed.torch_dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(cpu_distributed.torch_dist, 'init_process_group',
                        lambda backend: started.append(backend))
    cfg = Config(given)
    cpu_distributed.setup_cpu_distributed(cfg)
    assert started == ['gloo']
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
    if given:  # what the config had is kept
        assert cfg.env_cfg.dist_cfg.timeout == 60
        assert cfg.model_wrapper_cfg.find_unused_parameters is True


def test_a_started_group_is_reused(monkeypatch):
    monkeypatch.setattr(cpu_distributed.torch_dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(cpu_distributed.torch_dist, 'init_process_group',
                        lambda backend: pytest.fail('started a second group'))
    cpu_distributed.setup_cpu_distributed(Config())


def test_refused_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(RuntimeError, match="setup_cpu_distributed is for machines without a GPU; "
                                           "expected mmengine's own launcher set-up here"):
        cpu_distributed.setup_cpu_distributed(Config())


def test_wrapper_drops_device_ids(monkeypatch):
    seen = {}
    monkeypatch.setattr(cpu_distributed.MMDistributedDataParallel, '__init__',
                        lambda self, module, device_ids, **kwargs: seen.update(
                            module=module, device_ids=device_ids, **kwargs))
    module = torch.nn.Linear(2, 2)
    cpu_distributed.CPUDistributedDataParallel(module, device_ids=[0], broadcast_buffers=False)
    assert seen == dict(module=module, device_ids=None, broadcast_buffers=False)

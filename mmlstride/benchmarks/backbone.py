"""The backbone benchmark (``tools/benchmark_backbone.py``): a ResNet-50 with mmdet's parameter
names, built from torch and :mod:`mmlstride.ops` alone, plain or with LSConv in stages 2-4, in
training mode as mmdet trains it, and the time of its forward+backward step."""
import contextlib
import statistics
from typing import List, Optional

import torch
from torch import Tensor, nn

from ..ops import LSConv2d
from .timing import elapsed_ms

SETTINGS = ('resnet', 'default', 'learned')
BLOCKS = (3, 4, 6, 3)  # ResNet-50


class Bottleneck(nn.Module):
    """mmdet's pytorch-style bottleneck: 1x1, 3x3 (strided), 1x1, with a 1x1 shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, setting: str) -> None:
        super().__init__()
        lsconv = setting != 'resnet' and stride > 1
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = (LSConv2d(planes, planes, 3, stride, 1, bias=False, phase=0.5) if lsconv
                      else nn.Conv2d(planes, planes, 3, stride, 1, bias=False))
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride > 1 or inplanes != planes * 4:
            shortcut = (LSConv2d(inplanes, planes * 4, 1, stride, bias=False) if lsconv
                        else nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False))
            if lsconv:
                shortcut.follow_stride(self.conv2)
                self.conv2.learnable_stride.requires_grad_(setting == 'learned')
            self.downsample = nn.Sequential(shortcut, nn.BatchNorm2d(planes * 4))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 with mmdet's names; LSConv in stages 2-4 unless ``setting`` is 'resnet'."""

    def __init__(self, setting: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, blocks in enumerate(BLOCKS):
            planes = 64 * 2**stage
            layers = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(Bottleneck(inplanes, planes, stride, setting))
                inplanes = planes * 4
            setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in range(len(BLOCKS)):
            x = getattr(self, f'layer{stage + 1}')(x)
            outs.append(x)
        return outs

    def train_as_mmdet(self) -> 'ResNet50':
        """Training mode as mmdet trains it: ``frozen_stages=1`` (the stem and stage 1 frozen,
        in eval mode) and ``norm_eval=True`` (every batch norm in eval mode)."""
        self.train()
        for module in (self.conv1, self.bn1, self.layer1):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


def step_time(model: nn.Module, x: Tensor, dtype: torch.dtype, repeats: int,
              warmup: int) -> float:
    """Median ms of one forward+backward (autocast to ``dtype`` unless float32)."""
    device = x.device.type
    autocast = (contextlib.nullcontext() if dtype == torch.float32 else
                torch.autocast(device, dtype=dtype))

    def step():
        with autocast:
            loss = sum(out.float().mean() for out in model(x))
        loss.backward()

    times = [elapsed_ms(step, x.device) for _ in range(warmup + repeats)]
    times = times[warmup:]
    return statistics.median(times)

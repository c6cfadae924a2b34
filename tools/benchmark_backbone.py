"""A ResNet-50 backbone's training step with LSConv against the plain one, at detection size.

Times forward+backward of the backbone alone (the sum of its four outputs' means as the loss)
at 2 x 3 x 800 x 1333 by default, as mmdet trains it (``frozen_stages=1``, batch norm in eval
mode, the 'pytorch' style: the stride on the 3 x 3 conv), for

- ``resnet``: mmdet's ``ResNet-50``;
- ``default``: ``LSResNet``'s default, strides frozen at 2 with the grid half a pixel in
  (stages 2-4, shortcuts following the main conv);
- ``learned``: the same with the strides learning.

The network is built here from torch and ``mmlstride.ops`` alone, with mmdet's parameter
names, so that it runs where mmdet is not installed (``tests/tools/test_tools.py`` checks that it
computes what mmdet's ``ResNet`` and ``LSResNet`` compute). CUDA: CUDA events, float32 (TF32
as torch's defaults leave it, or ``--tf32``) and bfloat16 autocast; CPU: the host clock.
Prints medians in ms and ratios to ``resnet``.

    python tools/benchmark_backbone.py --device cuda --dtype float32 bfloat16 --out b.json
"""
import argparse
import contextlib
import json
import statistics
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from mmlstride.benchmarking import elapsed_ms
from mmlstride.ops import LSConv2d

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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', nargs='+', default=['float32', 'bfloat16'],
                        choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--tf32', action='store_true', help='TF32 in float32 convolutions')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size, device=args.device)
    results: Dict[str, Dict[str, float]] = {}
    models = {s: ResNet50(s).to(args.device).train_as_mmdet() for s in SETTINGS}
    print(f'| dtype | ' + ' | '.join(SETTINGS) + ' |')
    print('|' + '---|' * (1 + len(SETTINGS)))
    for name in args.dtype:
        dtype = getattr(torch, name)
        results[name] = {s: step_time(m, x, dtype, args.repeats, args.warmup)
                         for s, m in models.items()}
        floor = results[name]['resnet']
        print(f'| {name} | ' + ' | '.join(f'{v:.1f} ({v / floor:.3f}x)'
                                          for v in results[name].values()) + ' |', flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(device=args.device, torch=torch.__version__, size=args.size,
                           batch=args.batch, tf32=args.tf32, ms=results), f, indent=1)


if __name__ == '__main__':
    main()

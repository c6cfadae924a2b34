"""A ResNet-50 backbone's training step with LSConv against the plain one, at detection size.

Times forward+backward of the backbone alone (the sum of its four outputs' means as the loss)
at 2 x 3 x 800 x 1333 by default, as mmdet trains it (``frozen_stages=1``, batch norm in eval
mode, the 'pytorch' style: the stride on the 3 x 3 conv), for

- ``resnet``: mmdet's ``ResNet-50``;
- ``default``: ``LSResNet``'s default, strides frozen at 2 with the grid half a pixel in
  (stages 2-4, shortcuts following the main conv);
- ``learned``: the same with the strides learning.

The network (``mmlstride.benchmarks.backbone``) is built from torch and ``mmlstride.ops`` alone,
with mmdet's parameter names, so that it runs where mmdet is not installed
(``tests/tools/test_benchmarks.py`` checks that it computes what mmdet's ``ResNet`` and
``LSResNet`` compute). CUDA: CUDA events, float32 (TF32 as torch's defaults leave it, or
``--tf32``) and bfloat16 autocast; CPU: the host clock. Prints medians in ms and ratios to
``resnet``.

    python tools/benchmark_backbone.py --device cuda --dtype float32 bfloat16 --out b.json
"""
import argparse
import json
from typing import Dict, List, Optional

import torch

from mmlstride.benchmarks.backbone import SETTINGS, ResNet50, step_time


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
    print('| dtype | ' + ' | '.join(SETTINGS) + ' |')
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

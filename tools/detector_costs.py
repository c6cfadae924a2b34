"""What a detector config costs: backbone multiply-adds per image, inference and training time.

Prints (and with --out writes) a JSON object:
- ``backbone_macs``: multiply-adds of the backbone on one image of the config's test size,
  counted by mmengine's get_model_complexity_info (LSConv included: importing mmlstride
  registers its counting rule);
- ``inference_ms_per_image``: median wall time of the model's test step on one val image
  (batch 1, through the test pipeline, after warm-up), with --checkpoint's weights if given;
  its box decoding and NMS take longer the more boxes score above the threshold, so it
  depends on the weights;
- ``network_ms_per_image``: median wall time of the network alone (backbone, neck and head
  outputs, no post-processing) on one random image of the test size, the same weights;
- ``train_s_per_iter``: median wall time of a training iteration (the config's batch,
  optimizer and hooks) over --train-iters iterations after --warmup.
Times are for this process's threads (OMP_NUM_THREADS); measure one config at a time, with
nothing else running, and compare in ratios.

    python tools/detector_costs.py CONFIG [--checkpoint CKPT] [--out costs.json]
"""
import argparse
import json
import os
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from mmlstride.benchmarks.detector_costs import SAMPLES, costs
from mmlstride.engine import load_config


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='weights for the inference timing (default: the '
                                             'initial ones)')
    parser.add_argument('--images', type=int, default=100, help='val images timed')
    parser.add_argument('--train-iters', type=int, default=40, help='training iterations timed')
    parser.add_argument('--warmup', type=int, default=10,
                        help='images and iterations run first, not timed')
    parser.add_argument('--out', help='also write the JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    for name in ('images', 'train_iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} {getattr(args, name)}: expected >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: expected >= 0')
    if args.checkpoint and not os.path.exists(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint}: no such file')
    cfg = load_config(args.config, args.cfg_options)
    result = costs(cfg, args.config, args.checkpoint, args.images, args.train_iters, args.warmup)
    summary = {k: v for k, v in result.items() if k not in SAMPLES}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    sys.exit(main() and 0)

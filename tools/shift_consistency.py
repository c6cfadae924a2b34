"""Shift consistency of a trained mmdet detector on its config's test set.

Evaluates the detector on the test images shifted right and down by 1-7 whole pixels and by
0.5-3.5 pixels (bilinear), boxes moved with them, and prints mAP at each shift and the
consistency (the fraction of ground-truth objects whose match, same class, IoU >= 0.5 and
score >= --score-thr, is the same as without the shift); see mmlstride.evaluation.

    python tools/shift_consistency.py CONFIG CHECKPOINT [--out result.json]
"""
import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
from mmengine.config import DictAction

from mmlstride.engine import load_config, load_weights
from mmlstride.evaluation import HALF_PIXEL_SHIFTS, WHOLE_PIXEL_SHIFTS, shift_consistency
from mmlstride.evaluation.shift_consistency import DEFAULT_SCORE_THR, Detections


def load_test_set(cfg) -> tuple:
    """The config's test images (BGR, as mmdet loads them) and their ground truth."""
    import mmcv
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    dataset.full_init()
    images, truths = [], []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        images.append(mmcv.imread(info['img_path']))
        kept = [i for i in info['instances'] if not i.get('ignore_flag', 0)]
        truths.append((np.array([i['bbox'] for i in kept], dtype=np.float64).reshape(-1, 4),
                       np.array([i['bbox_label'] for i in kept], dtype=np.int64)))
    return images, truths, len(dataset.metainfo['classes'])


def detector(cfg, checkpoint: str, batch_size: int):
    """A function from a list of images (BGR arrays) to the detections of the config's
    model with these weights, through the config's test pipeline."""
    import torch
    from mmcv.transforms import Compose
    from mmdet.apis import init_detector
    from mmengine.dataset import pseudo_collate
    model = init_detector(cfg, None, device='cpu')
    load_weights(model, checkpoint)
    steps = [dict(step) for step in cfg.test_dataloader.dataset.pipeline
             if step['type'] != 'LoadAnnotations']
    steps[0] = dict(type='mmdet.LoadImageFromNDArray')
    pipeline = Compose(steps)

    def predict(images: List[np.ndarray]) -> List[Detections]:
        out = []
        for start in range(0, len(images), batch_size):
            batch = pseudo_collate([pipeline(dict(img=image, img_id=start + i))
                                    for i, image in enumerate(images[start:start + batch_size])])
            with torch.no_grad():
                for sample in model.test_step(batch):
                    found = sample.pred_instances
                    out.append((found.bboxes.numpy(), found.scores.numpy(),
                                found.labels.numpy()))
        return out
    return predict


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', help='write the results here as JSON')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THR,
                        help='the score a detection needs to match an object')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='key=value overrides of the config, as mmdet\'s tools take them')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr {args.score_thr}: expected a value in [0, 1]')
    if not os.path.exists(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint}: no such file')
    cfg = load_config(args.config, args.cfg_options)
    images, truths, num_classes = load_test_set(cfg)
    result = shift_consistency(detector(cfg, args.checkpoint, args.batch_size), images, truths,
                               num_classes, WHOLE_PIXEL_SHIFTS + HALF_PIXEL_SHIFTS,
                               args.score_thr)
    result.update(config=os.path.abspath(args.config),
                  checkpoint=os.path.abspath(args.checkpoint), images=len(images))
    print('| shift (dx, dy) | mAP | consistency | objects |\n|---|---|---|---|')
    for row in result['per_shift']:
        print(f"| {row['shift'][0]:g}, {row['shift'][1]:g} | {row['mAP']:.1f} | "
              f"{row['consistency']:.3f} | {row['objects']} |")
    for name in ('whole', 'fractional'):
        summary = result[name]
        print(f"{name}-pixel shifts: mAP {summary['mAP_mean']:.1f} (spread "
              f"{summary['mAP_spread']:.1f}), consistency {summary['consistency']:.3f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    sys.exit(main() and 0)

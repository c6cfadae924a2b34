"""Shift consistency of a trained mmdet detector on its config's test set.

Evaluates the detector on the test images shifted right and down by 1-7 whole pixels and by
0.5-3.5 pixels (bilinear), boxes moved with them, and prints mAP at each shift and the
consistency (the fraction of ground-truth objects whose match, same class, IoU >= 0.5 and
score >= --score-thr, is the same as without the shift); see mmlstride.evaluation. Runs
mmengine's evaluation: the config's test set in a ShiftedDataset (ShiftContent put after its
loading steps), the model's test_step, ShiftConsistencyMetric.

    python tools/shift_consistency.py CONFIG CHECKPOINT [--out result.json]
"""
import argparse
import json
import os
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from mmlstride.engine import load_config, load_weights
from mmlstride.evaluation.shift_consistency import DEFAULT_SCORE_THR


def evaluate(cfg, checkpoint: str, score_thr: float, batch_size: int) -> dict:
    """The report of ShiftConsistencyMetric on the config's test set under the default
    shifts, for the config's model with these weights."""
    import torch
    from mmdet.apis import init_detector
    from mmengine.dataset import pseudo_collate
    from mmengine.evaluator import Evaluator

    from mmlstride.evaluation import ShiftConsistencyMetric, ShiftedDataset, with_shift_content
    model = init_detector(cfg, None, device='cpu')
    load_weights(model, checkpoint)
    model.eval()
    dataset_cfg = cfg.test_dataloader.dataset.copy()
    dataset_cfg.pipeline = with_shift_content(dataset_cfg.pipeline)
    dataset = ShiftedDataset(dataset_cfg)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=pseudo_collate)
    metric = ShiftConsistencyMetric(score_thr=score_thr)
    evaluator = Evaluator(metric)
    evaluator.dataset_meta = dataset.metainfo
    with torch.no_grad():
        for batch in loader:
            evaluator.process(model.test_step(batch), batch)
    evaluator.evaluate(len(dataset))
    return metric.report


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
    result = evaluate(cfg, args.checkpoint, args.score_thr, args.batch_size)
    result.update(config=os.path.abspath(args.config),
                  checkpoint=os.path.abspath(args.checkpoint))
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

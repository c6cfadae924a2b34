"""Exports an mmdet detector with LSConv to ONNX and checks it in ONNX Runtime.

    python tools/deploy.py CONFIG CHECKPOINT --out DIR [--images 8] [--opset 18]

Like mmdeploy's torch2onnx for the network part: the detector's LSConv layers are switched
to deploy (their learned strides and phases held as constants: a plain strided Conv where a
stride is whole, else GridSample and a Conv; see mmlstride.ops.ls_conv2d_export), and its
tensor-mode forward (backbone, neck and head outputs, before box decoding and NMS, which run
on the host as in mmdet) is exported with dynamic batch, height and width to
DIR/detector.onnx, in standard operators only. Then, on images of the config's test set, it
prints the largest difference between ONNX Runtime's outputs and PyTorch's, the detections of
both, and the latency against the same detector with fixed strides (LSConv layers replaced by
nn.Conv2d at their nominal stride, same weights) in ONNX Runtime and in PyTorch (eager,
no_grad; median ratio over interleaved repeats, one process), and draws the detections of
PyTorch and of ONNX Runtime side by side in DIR/detections.jpg.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch

from mmlstride.deployment import (TensorHead, deploy_lsconv_layers, detections, draw,
                                  export_onnx, fixed_stride_copy, largest_relative_difference,
                                  load_detector, load_test_batch, median_latency_ratio,
                                  onnx_session, run_session)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='directory for the ONNX files and picture')
    parser.add_argument('--images', type=int, default=8, help='test images to check on')
    parser.add_argument('--opset', type=int, default=18, choices=(18, 19))
    parser.add_argument('--repeats', type=int, default=20, help='latency repeats')
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector, cfg = load_detector(args.config, args.checkpoint)
    layers, whole = deploy_lsconv_layers(detector)
    images, samples, classes = load_test_batch(cfg, detector, args.images)

    network, fixed = TensorHead(detector).eval(), TensorHead(fixed_stride_copy(detector)).eval()
    export_onnx(network, images, out / 'detector.onnx', args.opset)
    export_onnx(fixed, images, out / 'detector_fixed_strides.onnx', args.opset)
    session = onnx_session(out / 'detector.onnx')
    baseline = onnx_session(out / 'detector_fixed_strides.onnx')

    with torch.no_grad():
        expected = network(images)
    found = run_session(session, images)
    worst = largest_relative_difference(found, expected)
    with torch.no_grad():
        torch_results = detections(detector, expected, samples)
        onnx_results = detections(detector, found, samples)
    kept = [(int((r.scores >= 0.3).sum()), int((o.scores >= 0.3).sum()))
            for r, o in zip(torch_results, onnx_results)]
    lsconv_ms, fixed_ms, ratio = median_latency_ratio(
        lambda: run_session(session, images), lambda: run_session(baseline, images),
        args.repeats)
    with torch.no_grad():
        eager = median_latency_ratio(lambda: network(images), lambda: fixed(images),
                                     args.repeats)
    draw(samples[:4], torch_results[:4], onnx_results[:4], classes, out / 'detections.jpg')

    print(f'exported {out / "detector.onnx"} (opset {args.opset}, dynamic batch, height, width); '
          f'{layers} LSConv layers, {whole} at whole strides (plain Conv), '
          f'{layers - whole} sampled (GridSample)')
    print(f'{len(samples)} test images of {tuple(images.shape[2:])} px: largest difference '
          f'ONNX Runtime vs PyTorch, relative to each output\'s largest value: {worst:.1e}')
    print('detections with score >= 0.3 per image (PyTorch, ONNX Runtime): '
          + ', '.join(f'{a}/{b}' for a, b in kept))
    print(f'ONNX Runtime CPU, batch {len(samples)}: LSConv {lsconv_ms:.1f} ms, fixed strides '
          f'{fixed_ms:.1f} ms, median ratio {ratio:.2f} ({args.repeats} interleaved repeats)')
    print(f'PyTorch eager CPU, no_grad, batch {len(samples)}: LSConv {eager[0]:.1f} ms, fixed '
          f'strides {eager[1]:.1f} ms, median ratio {eager[2]:.2f}')
    print(f'wrote {out / "detections.jpg"} (left PyTorch, right ONNX Runtime)')


if __name__ == '__main__':
    main()

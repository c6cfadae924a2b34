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
import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.runner import Runner
from torch import Tensor, nn

import mmlstride  # noqa: F401  (registers LSConv, LSResNet and the digits dataset)
from mmlstride.engine import load_config, load_weights
from mmlstride.ops import LSConv2d, switch_to_deploy
from mmlstride.torch_compat import onnx_export, require_feature


class TensorHead(nn.Module):
    """The detector's tensor-mode forward, its per-level outputs as one flat tuple."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        outputs = self.detector._forward(images)
        return tuple(t for level_outputs in outputs for t in level_outputs)


def fixed_stride_copy(detector: nn.Module) -> nn.Module:
    """A copy of ``detector`` whose LSConv layers are nn.Conv2d at their nominal stride."""
    fixed = copy.deepcopy(detector)
    for parent in list(fixed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LSConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 child.stride, child.padding, child.dilation, child.groups,
                                 child.bias is not None)
                conv.load_state_dict({k: v for k, v in child.state_dict().items()
                                      if k in ('weight', 'bias')})
                setattr(parent, name, conv)
    return fixed


def export(model: nn.Module, images: Tensor, path: Path, opset: int) -> None:
    """Exports ``model`` with dynamic batch, height and width (from 64 pixels)."""
    require_feature('the dynamo ONNX exporter')
    dim = torch.export.Dim
    shapes = ({0: dim('batch'), 2: dim('height', min=64), 3: dim('width', min=64)}, )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        onnx_export(model, (images, ), str(path), opset, dynamo=True, dynamic_shapes=shapes,
                    verbose=False)


def session_for(path: Path):
    """An ONNX Runtime CPU session whose threads sleep between runs (timed interleaved)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def run_session(session, images: Tensor) -> List[Tensor]:
    return [torch.from_numpy(t) for t in
            session.run(None, {session.get_inputs()[0].name: images.numpy()})]


def median_latency_ratio(run, baseline, repeats: int) -> Tuple[float, ...]:
    """Median ms of calls of ``run`` and ``baseline`` and the median of their per-repeat
    ratios, the two interleaved within each repeat."""
    times = {0: [], 1: []}
    ratios = []
    for _ in range(repeats + 2):
        for key, current in ((0, run), (1, baseline)):
            start = time.perf_counter()
            current()
            times[key].append(time.perf_counter() - start)
        ratios.append(times[0][-1] / times[1][-1])
    return (1e3 * statistics.median(times[0][2:]), 1e3 * statistics.median(times[1][2:]),
            statistics.median(ratios[2:]))


def detections(detector: nn.Module, outputs: Sequence[Tensor], samples) -> list:
    """Boxes, scores and labels from the flat head outputs (mmdet's predict_by_feat)."""
    levels = len(outputs) // 2
    metas = [sample.metainfo for sample in samples]
    return detector.bbox_head.predict_by_feat(list(outputs[:levels]), list(outputs[levels:]),
                                              batch_img_metas=metas, rescale=True)


def label_positions(corners: np.ndarray, height: float) -> List[Tuple[float, float]]:
    """Where to write each box's label: at its top-left corner, moved down by ``height`` past
    the labels already placed near it, so that labels of boxes on one object do not overlap."""
    placed: List[Tuple[float, float]] = []
    for x, y in corners:
        while any(abs(x - px) < 3 * height and abs(y - py) < height for px, py in placed):
            y += height
        placed.append((float(x), float(y)))
    return placed


def draw(samples, torch_results, onnx_results, classes: Sequence[str], path: Path,
         score: float = 0.3, scale: int = 3, font_size: int = 11) -> None:
    """The images, enlarged ``scale`` times, with PyTorch's detections (left) and ONNX
    Runtime's (right) of score >= ``score``, each labelled with its class and score on a dark
    ground, labels on one object stacked."""
    import mmcv
    from mmdet.visualization import DetLocalVisualizer
    visualizer = DetLocalVisualizer()
    rows = []
    for sample, ours, theirs in zip(samples, torch_results, onnx_results):
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        image = mmcv.imresize(image, (image.shape[1] * scale, image.shape[0] * scale),
                              interpolation='nearest')
        pair = []
        for result in (ours, theirs):
            order = result.scores.argsort(descending=True)
            order = order[result.scores[order] >= score]
            boxes = result.bboxes[order] * scale
            visualizer.set_image(image)
            visualizer.draw_bboxes(boxes, edge_colors='lime', line_widths=1)
            corners = boxes[:, :2].clamp(min=0).numpy()
            for (x, y), label, value in zip(label_positions(corners, font_size + 5),
                                            result.labels[order], result.scores[order]):
                visualizer.draw_texts(f'{classes[int(label)]} {float(value):.2f}',
                                      np.array([x + 2, y + 1]), colors='yellow',
                                      font_sizes=font_size,
                                      bboxes=dict(facecolor='black', alpha=0.7, pad=1,
                                                  edgecolor='none'))
            pair.append(visualizer.get_image())
        rows.append(np.concatenate([pair[0], np.full((image.shape[0], 6, 3), 255, np.uint8),
                                    pair[1]], axis=1))
    mmcv.imwrite(np.concatenate(rows, axis=0)[..., ::-1], str(path))


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
    cfg = load_config(args.config)
    from mmdet.registry import MODELS
    detector = MODELS.build(cfg.model)
    load_weights(detector, args.checkpoint)
    detector.eval()
    layers = [m for m in detector.modules() if isinstance(m, LSConv2d)]
    switch_to_deploy(detector)
    whole = sum(all(s == round(s) for s in m.deploy_stride) and m.deploy_phase_is_constant
                for m in layers)
    cfg.test_dataloader.batch_size = args.images
    loader = Runner.build_dataloader(cfg.test_dataloader)
    batch = next(iter(loader))
    data = detector.data_preprocessor(batch, False)
    images, samples = data['inputs'], data['data_samples']

    network, fixed = TensorHead(detector).eval(), TensorHead(fixed_stride_copy(detector)).eval()
    export(network, images, out / 'detector.onnx', args.opset)
    export(fixed, images, out / 'detector_fixed_strides.onnx', args.opset)
    session = session_for(out / 'detector.onnx')
    baseline = session_for(out / 'detector_fixed_strides.onnx')

    with torch.no_grad():
        expected = network(images)
    found = run_session(session, images)
    worst = max(float((f - e).abs().max() / e.abs().max()) for f, e in zip(found, expected))
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
    draw(samples[:4], torch_results[:4], onnx_results[:4], loader.dataset.metainfo['classes'],
         out / 'detections.jpg')

    print(f'exported {out / "detector.onnx"} (opset {args.opset}, dynamic batch, height, width); '
          f'{len(layers)} LSConv layers, {whole} at whole strides (plain Conv), '
          f'{len(layers) - whole} sampled (GridSample)')
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

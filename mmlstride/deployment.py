"""Deploying a detector with LSConv: its network as a module of tensors (the tensor-mode
forward, before box decoding and NMS), the same detector with fixed strides, export to ONNX with
dynamic batch, height and width, ONNX Runtime sessions and their outputs, interleaved latency
ratios, and the detections from the network's outputs, drawn side by side.

``tools/deploy.py`` is the command over it. Needs mmengine and mmdet for the detector, the
exporter's packages (onnx, onnxscript) and onnxruntime for the ONNX steps, each imported where
used."""
import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .ops import LSConv2d, switch_to_deploy
from .torch_compat import onnx_export, require_feature


def load_detector(config: str, checkpoint: str) -> Tuple[nn.Module, Any]:
    """The config's detector with the checkpoint's weights, in eval mode, and the config."""
    from mmdet.registry import MODELS

    from .engine import load_config, load_weights
    cfg = load_config(config)
    detector = MODELS.build(cfg.model)
    load_weights(detector, checkpoint)
    detector.eval()
    return detector, cfg


def deploy_lsconv_layers(detector: nn.Module) -> Tuple[int, int]:
    """Switches the LSConv layers of ``detector`` to deploy; how many there are, and how many
    of them export as a plain Conv (whole strides and a constant phase)."""
    layers = [m for m in detector.modules() if isinstance(m, LSConv2d)]
    switch_to_deploy(detector)
    whole = sum(all(s == round(s) for s in m.deploy_stride) and m.deploy_phase_is_constant
                for m in layers)
    return len(layers), whole


def load_test_batch(cfg: Any, detector: nn.Module,
                    images: int) -> Tuple[Tensor, list, Sequence[str]]:
    """The first ``images`` images of the config's test set as ``detector`` preprocesses them,
    their data samples, and the test set's class names."""
    from mmengine.runner import Runner
    cfg.test_dataloader.batch_size = images
    loader = Runner.build_dataloader(cfg.test_dataloader)
    data = detector.data_preprocessor(next(iter(loader)), False)
    return data['inputs'], data['data_samples'], loader.dataset.metainfo['classes']


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


def export_onnx(model: nn.Module, example: Tensor, path: Union[str, Path], opset: int,
                min_size: int = 64) -> None:
    """Exports ``model`` to ONNX (the dynamo exporter, in standard operators) with dynamic
    batch, height and width (each at least ``min_size``), its warnings silenced."""
    require_feature('the dynamo ONNX exporter')
    dim = torch.export.Dim
    shapes = ({0: dim('batch'), 2: dim('height', min=min_size), 3: dim('width', min=min_size)}, )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        onnx_export(model, (example, ), str(path), opset, dynamo=True, dynamic_shapes=shapes,
                    verbose=False)


def onnx_session(path: Union[str, Path]) -> Any:
    """An ONNX Runtime CPU session whose threads sleep between runs: spinning threads of one
    session would slow the next one timed (sessions are timed interleaved)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def run_session(session: Any, images: Tensor) -> List[Tensor]:
    """The outputs of an ONNX Runtime session on ``images`` (its one input)."""
    return [torch.from_numpy(t) for t in
            session.run(None, {session.get_inputs()[0].name: images.numpy()})]


def largest_relative_difference(found: Sequence[Tensor], expected: Sequence[Tensor]) -> float:
    """The largest difference between ``found`` and ``expected``, output by output, relative to
    each expected output's largest magnitude."""
    return max(float((f - e).abs().max() / e.abs().max()) for f, e in zip(found, expected))


def median_latency_ratio(run: Callable[[], object], baseline: Callable[[], object],
                         repeats: int) -> Tuple[float, float, float]:
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


def detections(detector: nn.Module, outputs: Sequence[Tensor], samples: Sequence) -> list:
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


def draw(samples: Sequence, torch_results: Sequence, onnx_results: Sequence,
         classes: Sequence[str], path: Union[str, Path],
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

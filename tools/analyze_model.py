#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Count the parameters, FLOPs and activations of a model, or print its structure.

Usage:
    # Semantic models: FLOPs at the training crop size (no dataset needed).
    python tools/analyze_model.py --tasks flop --num-inputs 1 --use-fixed-input-size \
        --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml
    # Panoptic models: FLOPs averaged over 100 validation images (needs the dataset).
    python tools/analyze_model.py --tasks flop --num-inputs 100 \
        --config-file configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml
    python tools/analyze_model.py --tasks parameter structure --config-file ...

FLOPs and activations are counted by fvcore on a traced run of the model in eval mode
(inference post-processing included), one image at a time; the tool prints the per-module
table of the first input, the mean and standard deviation of the totals over all inputs, and
the input sizes it measured (FLOPs grow with the image size). A progress bar on stderr counts
the inputs (``--no-progress``: none). Element-wise operations are not counted, as in
Detectron2's analysis tools.
"""

import argparse
import logging
import sys
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from fvcore.nn import (
    ActivationCountAnalysis,
    FlopCountAnalysis,
    flop_count_table,
    parameter_count_table,
)
from fvcore.nn.jit_handles import get_shape
from torch import nn

from mask_former.checkpoint import CheckpointError, UntrustedCheckpointError, load_model_weights
from mask_former.config import load_config

logger = logging.getLogger("mask_former.analyze_model")

TASKS = ("flop", "activation", "parameter", "structure")

# Element-wise and bookkeeping operators left out of the counts, like Detectron2's analysis
# tools do (its module cannot be imported without caffe2 in Detectron2 0.6): their cost is
# small next to convolutions and matrix products, and fvcore has no formula for most of them.
IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::neg", "aten::reciprocal", "aten::sqrt", "aten::exp",
    "aten::log2", "aten::sigmoid", "aten::sigmoid_", "aten::softmax", "aten::argmax",
    "aten::argsort", "aten::sort", "aten::batch_norm", "aten::constant_pad_nd",
    "aten::max_pool2d", "aten::meshgrid", "aten::nonzero_numpy",
)  # fmt: skip


class TensorOutputs(nn.Module):
    """
    Wrap a Detectron2 model so that it takes one image tensor and returns only tensors,
    which is what tracing (and so fvcore's counters) accepts: the model's outputs
    ("sem_seg", "panoptic_seg" = (ids, segments_info), "instances") carry Python objects.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        """image: (3, H, W) in the model's input format; returns a tuple of output tensors."""
        (output,) = self.model([{"image": image}])
        tensors = []
        if "sem_seg" in output:
            tensors.append(output["sem_seg"])
        if "panoptic_seg" in output:
            tensors.append(output["panoptic_seg"][0])
        if "instances" in output:
            fields = output["instances"].get_fields()
            tensors.extend(v for v in fields.values() if torch.is_tensor(v))
            tensors.extend(v.tensor for v in fields.values() if hasattr(v, "tensor"))
        return tuple(tensors)


def setup(args: argparse.Namespace) -> CfgNode:
    """
    The frozen config of the model to analyze: ``--config-file``, no loader workers, then the
    command line's KEY VALUE overrides; CUDA falls back to the CPU where missing.
    """
    cfg = load_config(args.config_file, ["DATALOADER.NUM_WORKERS", "0", *args.opts])
    setup_logger(name="fvcore")
    setup_logger(name="mask_former")
    return cfg


def iter_images(cfg: CfgNode, num_inputs: int, fixed_input_size: bool) -> Iterable[torch.Tensor]:
    """
    Yield ``num_inputs`` image tensors (3, H, W): zeros of the training crop size
    (CROP.SIZE[0] x CROP.SIZE[0]) with ``fixed_input_size``, else test-set images resized as
    at test time (DATASETS.TEST[0] must be available).
    """
    if fixed_input_size:
        size = cfg.INPUT.CROP.SIZE[0]
        for _ in range(num_inputs):
            yield torch.zeros((3, size, size), dtype=torch.uint8)
        return
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    for count, batch in enumerate(loader):
        if count >= num_inputs:
            break
        yield batch[0]["image"]


def _count_nothing(inputs, outputs) -> Counter:
    return Counter()


def _mm_flops(inputs, outputs) -> int:
    """
    Multiply-accumulates of ``aten::mm`` (N, K) x (K, M): N K M, as fvcore's matmul handle
    counts them; it also accepts the traced ``out=`` tensor as a third input, which fvcore's
    handle refuses (inference writes some products straight into its result).
    """
    (n, k), (_, m) = get_shape(inputs[0]), get_shape(inputs[1])
    return n * k * m


def run_analyses(
    analysis_cls,
    model: nn.Module,
    images: Iterable[torch.Tensor],
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> List:
    """
    Run one fvcore analysis per image, with Detectron2's list of ignored operators.
    ``progress`` wraps the iteration over images (e.g. a tqdm bar), or None.
    """
    wrapper = TensorOutputs(model).eval()
    analyses = []
    for image in progress(images) if progress else images:
        analysis = analysis_cls(wrapper, (image,))
        # A zero-count handle rather than None: fvcore still counts an op that has a built-in
        # handle (e.g. batch_norm) when it is merely marked as ignored.
        analysis.set_op_handle(**{op: _count_nothing for op in IGNORED_OPS})
        if isinstance(analysis, FlopCountAnalysis):
            analysis.set_op_handle("aten::mm", _mm_flops)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.total()  # runs the trace now, under no_grad below
        analyses.append(analysis)
    return analyses


def _recording_sizes(images: Iterable[torch.Tensor], sizes: List) -> Iterator[torch.Tensor]:
    """``images`` unchanged, appending each one's (H, W) to ``sizes`` as it passes."""
    for image in images:
        sizes.append(tuple(image.shape[-2:]))
        yield image


def format_input_sizes(sizes: Sequence[Tuple[int, int]], most: int = 5) -> str:
    """
    "Input size (H x W): 64 x 64 (1 input)", or for inputs of several sizes the ``most``
    commonest with their counts, how many other sizes, and the mean height and width.
    """
    counts = Counter(sizes).most_common()
    if len(counts) == 1:
        (h, w), n = counts[0]
        return f"Input size (H x W): {h} x {w} ({n} input{'s' * (n > 1)})"
    listed = ", ".join(f"{h} x {w} ({n})" for (h, w), n in counts[:most])
    more = f", and {len(counts) - most} other sizes" if len(counts) > most else ""
    mean_h, mean_w = np.mean(np.array(sizes, dtype=np.float64), axis=0)
    return (
        f"Input sizes (H x W) of the {len(sizes)} inputs: {listed}{more}; "
        f"mean {mean_h:.0f} x {mean_w:.0f}"
    )


def _summarize(name: str, unit: str, analyses: Sequence, scale: float) -> str:
    totals = np.array([a.total() / scale for a in analyses])
    by_operator: Dict[str, float] = Counter()
    for a in analyses:
        for op, value in a.by_operator().items():
            by_operator[op] += value / scale / len(analyses)
    table = flop_count_table(analyses[0], max_depth=5)
    ops = ", ".join(f"{op}: {v:.3f}" for op, v in sorted(by_operator.items()))
    return (
        f"{name} table of the first input (raw counts, module by module):\n{table}\n"
        f"Average {unit} per operator: {ops}\n"
        f"Total {unit}: {totals.mean():.3f} +- {totals.std():.3f} over {len(totals)} input(s)"
    )


def _progress_bar(task: str, num_inputs: int) -> Callable[[Iterable], Iterable]:
    import tqdm

    return lambda items: tqdm.tqdm(
        items, desc=f"{task} count", total=num_inputs, unit="input", file=sys.stderr
    )


def _inputs_text(cfg: CfgNode, num_inputs: int, fixed_input_size: bool) -> str:
    if fixed_input_size:
        size = cfg.INPUT.CROP.SIZE[0]
        return f"{num_inputs} zero image(s) of {size} x {size}"
    return f"up to {num_inputs} images of {cfg.DATASETS.TEST[0]} resized as at test time"


@torch.no_grad()
def analyze(
    cfg: CfgNode,
    tasks: Sequence[str],
    num_inputs: int,
    fixed_input_size: bool,
    progress: bool = True,
) -> str:
    """
    Run the requested analyses on the model of ``cfg``; return the report text.
    ``progress``: a progress bar of the inputs on stderr for the flop and activation counts.
    """
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:  # the counts do not depend on the weights: none is fine here
        load_model_weights(model, cfg.MODEL.WEIGHTS, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
    model.eval()
    reports = []
    for task in tasks:
        if task == "parameter":
            reports.append("Parameter count:\n" + parameter_count_table(model, max_depth=5))
        elif task == "structure":
            reports.append("Model structure:\n" + str(model))
        else:
            logger.info("Counting %s on %s", task, _inputs_text(cfg, num_inputs, fixed_input_size))
            sizes: List[Tuple[int, int]] = []
            images = _recording_sizes(iter_images(cfg, num_inputs, fixed_input_size), sizes)
            counter = FlopCountAnalysis if task == "flop" else ActivationCountAnalysis
            bar = _progress_bar(task, num_inputs) if progress else None
            analyses = run_analyses(counter, model, images, bar)
            if not analyses:
                raise ValueError(f"No input image for the {task} analysis: the test set is empty")
            if task == "flop":
                summary = _summarize("Flop", "GFLOPs", analyses, 1e9)
            else:
                summary = _summarize("Activation", "M activations", analyses, 1e6)
            reports.append(f"{summary}\n{format_input_sizes(sizes)}")
    return "\n\n".join(reports)


# Flags of detectron2's training parser, which this tool used to take: they do nothing here, but
# command lines that pass them still run (with a warning); --help says so.
IGNORED_TRAINING_FLAGS = {
    "--resume": 0,
    "--eval-only": 0,
    "--num-gpus": 1,
    "--num-machines": 1,
    "--machine-rank": 1,
    "--dist-url": 1,
}


def _add_ignored_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "ignored", "training flags this tool once accepted: still accepted, and ignored"
    )
    for flag, nargs in IGNORED_TRAINING_FLAGS.items():
        ignored = "accepted for old command lines and ignored (a training flag)"
        if nargs:
            group.add_argument(flag, default=None, metavar="X", help=ignored)
        else:
            group.add_argument(flag, action="store_true", help=ignored)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the tasks, the inputs, the config file and its overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__.strip().split("\n\n")[0],
        epilog="Example: python tools/analyze_model.py --tasks flop parameter --num-inputs 1 "
        "--use-fixed-input-size --config-file configs/shapes/maskformer_R18_bs8_1200.yaml",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--tasks", choices=TASKS, required=True, nargs="+")
    parser.add_argument(
        "-n", "--num-inputs", default=100, type=int, help="number of inputs to average over"
    )
    parser.add_argument(
        "--use-fixed-input-size",
        action="store_true",
        help="use zero images of the training crop size instead of test images",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs at the end, e.g. MODEL.WEIGHTS model.pkl",
    )
    _add_ignored_flags(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the command line (``--num-inputs`` at least 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_inputs < 1:
        parser.error(f"--num-inputs must be at least 1, got {args.num_inputs}")
    for flag in IGNORED_TRAINING_FLAGS:
        if getattr(args, flag[2:].replace("-", "_")) not in (None, False):
            logger.warning("%s is a training flag: analyze_model.py ignores it", flag)
    return args


def main(argv: Optional[List[str]] = None) -> str:
    """Run the analyses of the command line; print and return the report."""
    args = parse_args(argv)
    cfg = setup(args)
    report = analyze(
        cfg, args.tasks, args.num_inputs, args.use_fixed_input_size, not args.no_progress
    )
    print(report)
    return report


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (CheckpointError, UntrustedCheckpointError) as e:
        # A refused, unreadable or unfitting MODEL.WEIGHTS: one line naming the file, status 1.
        sys.exit(str(e))

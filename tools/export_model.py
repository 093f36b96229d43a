#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Export a MaskFormer's inference on one image to ONNX, with dynamic image height and width.

The graph takes one float32 image, (3, H, W) (or (1, 3, H, W) with ``--batched``), values 0 to
255 in the config's INPUT.FORMAT channel order, as the model's "image" entry takes it; the
normalisation and the padding to MODEL.MASK_FORMER.SIZE_DIVISIBILITY happen inside the graph.
It returns "sem_seg" (K, H, W), the semantic scores at the input size, or with
``--raw-outputs`` "pred_logits" (Q, K + 1) and "pred_masks" (Q, Hp/4, Wp/4) (Hp, Wp: the padded
size) for panoptic or instance post-processing in Python (``mask_former.export.raw_mask_logits``
and ``mask_former.modeling.inference``). After the export the graph is checked with onnx and
run with onnxruntime on random images of two sizes against PyTorch (``--no-verify`` skips it).

The graph is made by ``torch.onnx.export(..., dynamo=True)``, the exporter built on
``torch.export`` (it needs the onnxscript package). ``--exporter torchscript`` uses the
deprecated TorchScript-based exporter instead, a fallback that gives the same graph inputs,
outputs and results (for a torch version whose torch.export path fails on a model).

Usage:
    python tools/export_model.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --output model.onnx [--raw-outputs] [--batched] [--exporter torchscript] \
        [--opts MODEL.WEIGHTS model.pkl]

The export and onnxruntime functions live in :mod:`mask_former.inference.export` (the
benchmark times an exported graph with its ``onnx_latency``); this script parses the command
line and calls them. Their names stay importable from here.
"""

import argparse
import logging
import sys
from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from mask_former.checkpoint import CheckpointError, UntrustedCheckpointError
from mask_former.config import load_config
from mask_former.inference.export import (
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    EXPORTERS,
    VERIFY_TOLERANCE,
    MissingPackageError,
    export,
    import_onnx_packages,
    onnx_latency,
    onnx_session,
    verify_export,
)

__all__ = [
    "MissingPackageError",
    "export",
    "import_onnx_packages",
    "main",
    "onnx_latency",
    "onnx_session",
    "setup_cfg",
    "verify_export",
]

logger = logging.getLogger("mask_former.export_model")


def setup_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """The frozen config: file, then ``opts``; CUDA falls back to the CPU where missing."""
    return load_config(config_file, opts)


def get_parser() -> argparse.ArgumentParser:
    """The command line of the tool."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--output", required=True, metavar="FILE", help="ONNX file to write")
    parser.add_argument(
        "--raw-outputs",
        action="store_true",
        help="return pred_logits (Q, K+1) and pred_masks (Q, Hp/4, Wp/4) instead of sem_seg",
    )
    parser.add_argument(
        "--batched", action="store_true", help="the input is (1, 3, H, W) instead of (3, H, W)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset version (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=DEFAULT_EXPORTER,
        help="dynamo: torch.onnx.export(dynamo=True), built on torch.export (default); "
        "torchscript: the deprecated TorchScript-based exporter, kept as a fallback",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch comparison"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """
    Export (and verify); 0 on success, 1 if the verification fails or MODEL.WEIGHTS cannot be
    used (its one-line reason printed last on stderr, no traceback), 2 if a package lacks.
    """
    args = get_parser().parse_args(argv)
    setup_logger(name="mask_former")
    try:
        import_onnx_packages(args.exporter)
    except MissingPackageError as e:
        logger.error("%s", e)
        return 2
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        wrapper = export(
            cfg,
            args.output,
            raw_outputs=args.raw_outputs,
            batched=args.batched,
            opset=args.opset,
            exporter=args.exporter,
        )
    except (CheckpointError, UntrustedCheckpointError) as e:
        print(e, file=sys.stderr)
        return 1
    if args.no_verify:
        return 0
    errors = verify_export(args.output, wrapper)
    if max(errors) > VERIFY_TOLERANCE:
        logger.error(
            "onnxruntime and PyTorch differ by up to %.3g (relative), more than %g: the graph "
            "is written but its results are not those of the model",
            max(errors),
            VERIFY_TOLERANCE,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

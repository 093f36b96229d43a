#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Benchmark MaskFormer on this machine: markdown tables on stdout and a JSON file of all
samples (``make bench`` runs the quick mode).

1. inference latency and images/s, batch 1 and 4: R50 and Swin-T semantic (ADE20K-150
   configs) at 512x512 and at 512x683 (batch 1) and, with ``--full``, R50 ADE20K-full (847
   classes) at 512x683 and R50 panoptic (COCO) at 800x1216;
2. one training iteration (forward + backward of the summed losses, no optimizer step) of the
   R50 semantic config, batch 2 at 512x512, with 3 and 24 Voronoi ground-truth segments, with
   the full-resolution and the point-sampled (12544 points) loss, and its peak memory;
3. the Hungarian matcher per image (Q=100, 150 classes, 128x128 masks, 24 segments of 512x512);
4. the train mapper of the shapes main config (images/s over shapes train records);
5. evaluation on shapes val: inference, post-processing and the evaluators (images/s);
6. the share of R50 inference (batch 1, 512x512 and 512x683) in the backbone, the pixel
   decoder, the transformer decoder and the pre/post-processing, with the FLOPs of each and the
   achieved GFLOP/s against the peak measured here (a GEMM and a convolution);
7. the R50 semantic model exported to ONNX (tools/export_model.py) in onnxruntime, beside the
   same graph in PyTorch, one 512x512 image (CPU, float32 only);
8. "variants" (with ``--full`` or ``--rows variants``): R50 and Swin-T at 512x683 with
   MODEL.MASK_FORMER.TEST.PRECISION auto, compiled (TEST.COMPILE; the first call, which
   compiles, timed apart) and both, and sliding-window inference (TEST.MODE slide) of a
   1024x1024 image; against a baseline these compare with the baseline's defaults;
9. "hf" (with ``--full`` or ``--rows hf``): Hugging Face transformers' MaskFormer (its model and
   ``post_process_semantic_segmentation``, float32) against this project's float32, auto and
   auto + compiled models on the same converted weights, R50 and Swin-T layouts at 512x683;
10. "parallel" (with ``--full`` or ``--rows parallel``): images/s of the Predictor (batch 1
   and 4) and of the demo's ``--parallel 2`` worker processes, 8 R50 images of 512x683.

The measurements live in the package ``mask_former.benchmark``; this script parses the
arguments and prints the tables.

Rows 1, 2 and 6 run each case in a process of its own (so the peak RSS is the case's), with
random weights drawn from a fixed seed and fixed inputs. ``--baseline CHECKOUT`` runs them also
with another checkout of this project (e.g. ``git worktree add ../mf-old <commit>``) or of the
original MaskFormer (its ``mask_former`` package on the same detectron2; its Swin needs ``timm``
importable, e.g. unpacked into the checkout), the two
alternating, both loading the same weights, and adds speed-up (baseline time / current time),
memory ratio (current / baseline) and agreement columns (identical semantic argmax pixels;
maximum relative difference of each loss).

Usage:
    python tools/benchmark.py [--full] [--threads 2] [--device cpu|cuda]
        [--dtype float32|bfloat16|float16] [--baseline CHECKOUT] [--json PATH] [--rows ...]

Examples (from the repository root)::

    make bench                                    # quick mode
    .venv/bin/python tools/benchmark.py --full
    git worktree add ../mf-baseline <commit>      # side by side with an older version
    .venv/bin/python tools/benchmark.py --baseline ../mf-baseline --rows peak inference train
    .venv/bin/python tools/benchmark.py --device cuda --dtype bfloat16
"""

import argparse
import logging
import os
import time
from typing import Dict, Optional, Sequence

import torch

from mask_former.benchmark import suite
from mask_former.benchmark.suite import MODES, QUICK_ROWS, ROWS

__all__ = ["MODES", "ROWS", "check_args", "main", "parse_args"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="more repeats, and R50 panoptic")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="run inference and training under torch.autocast for this dtype",
    )
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--json", default=None, help="default: output/benchmark_<time>.json")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        choices=ROWS,
        help=f"default: all with --full, else {' '.join(QUICK_ROWS)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse CUDA without CUDA and a baseline that is no checkout; default the JSON path."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.baseline is not None:
        args.baseline = os.path.realpath(args.baseline)
        if not os.path.isfile(os.path.join(args.baseline, "mask_former", "__init__.py")):
            raise SystemExit(f"--baseline {args.baseline} is not a checkout of this project")
    if args.rows is None:
        args.rows = list(ROWS if args.full else QUICK_ROWS)
    if args.json is None:
        args.json = os.path.join("output", time.strftime("benchmark_%Y%m%d_%H%M%S.json"))


def _print(text: str) -> None:
    print(text, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the selected rows; print their tables; return (and write) the results."""
    args = parse_args(argv)
    check_args(args)
    return suite.run(suite.Settings(**vars(args)), emit=_print)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("detectron2", "mask_former", "fvcore", "d2.evaluation", "d2.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    main()

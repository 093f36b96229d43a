#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The report of a training run: writes OUTPUT_DIR/report.html (figures in
OUTPUT_DIR/report_figures/) for a train_net.py output folder, from its config.yaml, metrics.json
and last checkpoint, which is run once over the validation set (DATASETS.TEST[0]) for the
confusion matrix, the per-class PQ and the drawn predictions.

Usage: python tools/report.py OUTPUT_DIR [--target panoptic_seg/PQ=55] [--num-images 12]
"""

import argparse
import logging
import sys
import time
from typing import Dict, List, Optional

import torch

from mask_former.checkpoint import UntrustedCheckpointError
from mask_former.data.user_datasets import add_register_argument, import_registration
from mask_former.report import write_report


def _target(text: str) -> tuple:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (panoptic_seg/PQ=55), got {text!r}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("output_dir", help="a train_net.py output folder")
    parser.add_argument(
        "--target",
        type=_target,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a target of a final metric, e.g. panoptic_seg/PQ=55 (may be repeated)",
    )
    parser.add_argument("--num-images", type=int, default=12, help="validation images to draw")
    parser.add_argument(
        "--max-images", type=int, default=None, help="evaluate the first N images only"
    )
    parser.add_argument("--dataset", default=None, help="dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the model (default: PyTorch's, one per core); 1 is the safe choice "
        "on a machine whose cores other processes use too",
    )
    add_register_argument(parser, " (when the run's test dataset is not built in)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Write the report; 0 on success, 1 with a one-line reason on stderr when it cannot."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    targets: Dict[str, float] = dict(args.target)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    try:
        for target in args.register:
            import_registration(target)
        path = write_report(
            args.output_dir,
            targets=targets,
            dataset=args.dataset,
            num_samples=args.num_images,
            max_images=args.max_images,
            batch_size=args.batch_size,
            progress=sys.stderr.isatty(),
        )
    # ValueError: ReportInputError, CheckpointError, DataError (a bad image or label file);
    # KeyError: yacs, for a key of config.yaml that this project does not know.
    except (OSError, ImportError, KeyError, ValueError, UntrustedCheckpointError) as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 1
    print(f"report: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Draw a registered dataset's ground truth: one picture per record, with class names.

Usage:
    python tools/visualize_data.py --dataset shapes_panoptic_val --output pictures/
    python tools/visualize_data.py --register my_datasets.py --dataset my_sem_seg_train \
        --output pictures/ --num 20
    # What the model is trained on: the records after the config's train mapper.
    python tools/visualize_data.py --source dataloader --output pictures/ \
        --config-file configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml

The drawing code is mask_former/data/pictures.py.
"""

import argparse
import logging
import sys
from typing import List, Optional, Sequence

import mask_former  # noqa: F401  (registers the datasets)
from mask_former.config import load_config
from mask_former.data.checks import unknown_datasets
from mask_former.data.pictures import SOURCES, PicturesResult, write_pictures
from mask_former.data.user_datasets import add_register_argument, import_registration

_DESCRIPTION = """\
Draw the ground truth of registered datasets (panoptic segments or semantic classes, with
class names) into a folder, one PNG per record named after its image: as stored
(--source annotation) or after the train mapper's augmentation, cropping and padding, i.e.
what the model is trained on (--source dataloader, which needs --config-file). Name the
datasets (--dataset), or give a config (--config-file) to draw its DATASETS.TRAIN.
Datasets of your own are registered by --register."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 every record drawn, 1 records skipped (unreadable files; "
        "tools/check_dataset.py names them all), 2 usage error or unknown dataset.",
    )
    parser.add_argument("--dataset", nargs="+", metavar="NAME", help="registered dataset names")
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="draw its DATASETS.TRAIN (unless --dataset is given) with its train mapper",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder of the pictures")
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="annotation",
        help="the files as stored (default), or the records after the config's train mapper",
    )
    parser.add_argument("--num", type=int, default=None, metavar="N", help="the first N records")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="picture size relative to the image (1.0)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the augmentations (dataloader; default 0)"
    )
    add_register_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.dataset and not args.config_file:
        parser.error("give --dataset NAME or --config-file FILE")
    if args.source == "dataloader" and not args.config_file:
        parser.error("--source dataloader needs --config-file (its train mapper augments)")
    if args.opts and not args.config_file:
        parser.error(f"config overrides {args.opts} need --config-file")
    if args.num is not None and args.num < 1:
        parser.error(f"--num must be at least 1, got {args.num}")
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")


def _datasets_and_config(args: argparse.Namespace):
    """The dataset names to draw and the config (None without --config-file)."""
    if not args.config_file:
        return list(args.dataset), None
    opts = ["DATALOADER.NUM_WORKERS", "0", *args.opts]
    if args.dataset:  # the mapper is built for the datasets it maps
        opts += ["DATASETS.TRAIN", str(tuple(args.dataset))]
    cfg = load_config(args.config_file, opts, cpu_fallback=False)
    return list(cfg.DATASETS.TRAIN), cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Draw the pictures of the command line; returns the exit status."""
    parser = get_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        for target in args.register:
            import_registration(target)
        names, cfg = _datasets_and_config(args)
    except (ImportError, FileNotFoundError, KeyError, ValueError, AssertionError) as e:
        return _error(str(e))
    problems = unknown_datasets(names) or ([] if names else ["the config names no datasets"])
    if problems:
        return _error(*problems)
    try:
        result = write_pictures(
            names,
            args.output,
            source=args.source,
            cfg=cfg,
            num=args.num,
            scale=args.scale,
            seed=args.seed,
            progress=None if args.no_progress else _progress_bar(args.source),
        )
    except ValueError as e:  # the config's mapper cannot be built
        return _error(str(e))
    return _summary(result, names, args.output)


def _progress_bar(source: str):
    import tqdm

    return lambda items: tqdm.tqdm(items, desc=f"drawing ({source})", unit="picture")


def _error(*messages: str) -> int:
    for message in messages:
        print(f"visualize_data.py: error: {message.splitlines()[0]}", file=sys.stderr)
    return 2


def _summary(result: PicturesResult, names: List[str], output: str) -> int:
    for message in result.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    print(f"Wrote {len(result.written)} pictures of {', '.join(names)} to {output}")
    if not result.skipped:
        return 0
    print(
        f"{len(result.skipped)} records could not be drawn; tools/check_dataset.py --dataset "
        f"{' '.join(names)} names every faulty file",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

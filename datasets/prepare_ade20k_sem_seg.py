#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
ADE20K-150 (SceneParsing): convert ``ADEChallengeData2016/annotations/{training,validation}``
(0 = other, 1..150 = classes) into ``annotations_detectron2`` label maps (0..149, 255 = ignore)
that detectron2's ``ade20k_sem_seg_*`` datasets read.

Usage: python datasets/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS]
"""

import argparse
import logging
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_ade20k_sem_seg")

NUM_CLASSES = 150
IGNORE_LABEL = 255


def convert_label(labels: np.ndarray, path: str) -> np.ndarray:
    """Shift labels down by one; 0 ("other") wraps to the ignore label 255."""
    if labels.ndim != 2 or labels.max(initial=0) > NUM_CLASSES:
        raise ValueError(f"{path}: expected a single-channel map with labels 0..{NUM_CLASSES}")
    return (labels.astype(np.int32) - 1).astype(np.uint8)  # 0 - 1 -> 255


def convert_split(in_dir: Path, out_dir: Path) -> int:
    if not in_dir.is_dir():
        raise FileNotFoundError(f"Annotation folder {in_dir} does not exist.")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(in_dir.glob("*.png"))
    for path in files:
        labels = np.asarray(Image.open(path))
        Image.fromarray(convert_label(labels, str(path))).save(out_dir / path.name)
    return len(files)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    args = parser.parse_args(argv)
    base = Path(args.root) / "ADEChallengeData2016"
    for folder in ("training", "validation"):
        n = convert_split(base / "annotations" / folder, base / "annotations_detectron2" / folder)
        logger.info("%s: %d label maps converted", folder, n)
    print(f"Wrote {base / 'annotations_detectron2'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

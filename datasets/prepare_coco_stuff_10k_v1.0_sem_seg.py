#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
COCO-Stuff-10k v1.0: split ``coco/coco_stuff_10k`` into ``images_detectron2/{train,test}``
(copied JPEGs) and ``annotations_detectron2/{train,test}`` (PNG label maps, contiguous ids
0..170 in the order of the 171 COCO-stuff classes, 255 = ignore), following
``imageLists/{train,test}.txt``.

The v1.0 annotations are MATLAB files whose variable ``S`` holds the label map with
1 = unlabeled and 2..172 = the 171 classes, so the label is ``S - 2`` (1 -> 255). MATLAB v7.3
files are HDF5 (read with h5py, which stores MATLAB's column-major arrays transposed); older
MATLAB files are read with scipy.

Usage: python datasets/prepare_coco_stuff_10k_v1.0_sem_seg.py [--root $DETECTRON2_DATASETS]
"""

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_coco_stuff_10k")

NUM_CLASSES = 171
IGNORE_LABEL = 255
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_mat_labels(path: Path) -> np.ndarray:
    """The ``S`` label map of a COCO-Stuff .mat annotation, as (H, W) int64."""
    with open(path, "rb") as f:
        header = f.read(520)
    # MATLAB v7.3 files are HDF5 with a 512-byte preamble.
    if _HDF5_SIGNATURE in (header[:8], header[512:520]):
        try:
            import h5py
        except ImportError as e:
            raise ImportError(f"{path} is a MATLAB v7.3 (HDF5) file: install h5py") from e
        with h5py.File(path, "r") as f:
            return np.asarray(f["S"]).T.astype(np.int64)
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "S" not in mat:
        raise KeyError(f"{path} has no variable 'S' (found: {sorted(mat)})")
    return np.asarray(mat["S"]).astype(np.int64)


def convert_label(s: np.ndarray, path: Path) -> np.ndarray:
    """``S - 2`` as uint8: classes 2..172 -> 0..170, unlabeled (0 or 1) -> 255."""
    if s.min(initial=0) < 0 or s.max(initial=0) > NUM_CLASSES + 1:
        raise ValueError(
            f"{path}: labels must lie in 0..{NUM_CLASSES + 1}, found {int(s.min())}..{int(s.max())}"
        )
    labels = s - 2
    labels[labels < 0] = IGNORE_LABEL
    return labels.astype(np.uint8)


def convert_split(base: Path, split: str) -> int:
    list_file = base / "imageLists" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"Image list {list_file} does not exist.")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    image_out = base / "images_detectron2" / split
    label_out = base / "annotations_detectron2" / split
    image_out.mkdir(parents=True, exist_ok=True)
    label_out.mkdir(parents=True, exist_ok=True)
    for name in names:
        stem = Path(name).stem
        image = base / "images" / f"{stem}.jpg"
        annotation = base / "annotations" / f"{stem}.mat"
        for path in (image, annotation):
            if not path.is_file():
                raise FileNotFoundError(f"{path} (listed in {list_file}) does not exist.")
        shutil.copyfile(image, image_out / image.name)
        labels = convert_label(read_mat_labels(annotation), annotation)
        Image.fromarray(labels).save(label_out / f"{stem}.png")
    return len(names)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    args = parser.parse_args(argv)
    base = Path(args.root) / "coco" / "coco_stuff_10k"
    for split in ("train", "test"):
        logger.info("%s: %d images", split, convert_split(base, split))
    print(f"Wrote {base / 'images_detectron2'} and {base / 'annotations_detectron2'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

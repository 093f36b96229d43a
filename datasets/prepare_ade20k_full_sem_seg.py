#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
ADE20K-full (847 classes): build ``ADE20K_2021_17_01/images_detectron2/{training,validation}``
(JPEG, shorter side at most 512) and ``annotations_detectron2/{training,validation}`` (uint16
TIFF train ids 0..846, 65535 = ignore) from the ADE20K 2021_17_01 release.

The image list comes from ``index_ade20k.pkl`` (its ``folder`` and ``filename`` lists); an
image's class map is its ``*_seg.png`` decoded as ``(R // 10) * 256 + G`` (the full-ADE class
index), mapped to the 847 train ids of MaskFormer (every other class -> 65535). Images whose
name contains "_val" go to validation, the others to training.

Usage: python datasets/prepare_ade20k_full_sem_seg.py [--root $DETECTRON2_DATASETS]
"""

import argparse
import logging
import os
import pickle
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_ade20k_full_sem_seg")

IGNORE_LABEL = 65535
MAX_SHORT_SIDE = 512
DATASET_DIR = "ADE20K_2021_17_01"


def train_id_lookup() -> np.ndarray:
    """Lookup table full-ADE class index -> train id (65535 for classes not trained on)."""
    from mask_former.data.datasets.categories import ade20k_full_categories

    lut = np.full(1 << 16, IGNORE_LABEL, dtype=np.uint16)
    for entry in ade20k_full_categories():
        lut[entry["ade_full_id"]] = entry["train_id"]
    return lut


def decode_class_map(seg_rgb: np.ndarray) -> np.ndarray:
    """Full-ADE class index of each pixel of a ``*_seg.png``: (R // 10) * 256 + G."""
    r = seg_rgb[..., 0].astype(np.int64)
    g = seg_rgb[..., 1].astype(np.int64)
    return (r // 10) * 256 + g


def resolve_image(root: Path, folder: str, filename: str) -> Path:
    """The image path of an index entry; ``folder`` starts at the release folder name."""
    candidates = [root / folder / filename]
    parts = Path(folder).parts
    if parts and parts[0] == DATASET_DIR:
        candidates.append(root / DATASET_DIR / Path(*parts[1:]) / filename)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"Image {filename} of index_ade20k.pkl not found at {candidates[0]}")


def resize_pair(image: Image.Image, labels: np.ndarray) -> Tuple[Image.Image, np.ndarray]:
    """Shrink so that the shorter side is 512 (image bilinear, labels nearest)."""
    w, h = image.size
    if min(h, w) <= MAX_SHORT_SIDE:
        return image, labels
    scale = MAX_SHORT_SIDE / min(h, w)
    size = (int(round(w * scale)), int(round(h * scale)))
    image = image.resize(size, Image.BILINEAR)
    labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    return image, labels


def convert_one(root: Path, folder: str, filename: str, lut: np.ndarray) -> str:
    image_path = resolve_image(root, folder, filename)
    seg_path = image_path.with_name(image_path.stem + "_seg.png")
    if not seg_path.is_file():
        raise FileNotFoundError(f"Segmentation {seg_path} of image {image_path} does not exist.")
    image = Image.open(image_path).convert("RGB")
    seg = np.asarray(Image.open(seg_path).convert("RGB"))
    if seg.shape[:2] != (image.size[1], image.size[0]):
        raise ValueError(f"{seg_path} is not the size of its image {image_path}.")
    labels = lut[decode_class_map(seg)]
    image, labels = resize_pair(image, labels)
    split = "validation" if "_val" in filename else "training"
    out = root / DATASET_DIR
    (out / "images_detectron2" / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations_detectron2" / split).mkdir(parents=True, exist_ok=True)
    image.save(out / "images_detectron2" / split / f"{image_path.stem}.jpg", quality=95)
    Image.fromarray(labels.astype(np.uint16)).save(
        out / "annotations_detectron2" / split / f"{image_path.stem}.tif"
    )
    return split


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    args = parser.parse_args(argv)
    root = Path(args.root)
    index_file = root / DATASET_DIR / "index_ade20k.pkl"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} does not exist (part of the ADE20K release).")
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    for key in ("folder", "filename"):
        if key not in index:
            raise KeyError(f"{index_file} has no {key!r} list")
    lut = train_id_lookup()
    counts = {"training": 0, "validation": 0}
    for folder, filename in zip(index["folder"], index["filename"]):
        counts[convert_one(root, folder, filename, lut)] += 1
    logger.info("Converted %s", counts)
    print(f"Wrote {root / DATASET_DIR / 'images_detectron2'} and annotations_detectron2")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

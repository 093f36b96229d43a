#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
ADE20K panoptic: build ``ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png`` and
``ade20k_panoptic_{train,val}.json`` (COCO panoptic format, categories 0..149 with ``isthing``)
from the SceneParsing semantic annotations (``annotations/``) and instance annotations
(``annotations_instance/``, from the ADE20K SceneParsing instance release).

- Stuff segments come from the semantic map: one per stuff class present (label = class + 1).
- Thing segments come from the instance map: R = instance class (1..100), G = instance id;
  ``ade20k_instance_catid_mapping.txt`` maps instance classes to the 150 classes.
  Things are drawn after stuff, so they win where both claim a pixel.
- Pixels of neither stay VOID (id 0). Segment ids follow panopticapi's IdGenerator (RGB close
  to the category colour); the generator is seeded, so reruns give the same files.
- Image ids come from ``ade20k_instance_imgCatIds.json`` (the instance release's image list).

The two mapping files ship next to this script. Requires ``panopticapi`` (panopticapi-lite).

Usage: python datasets/prepare_ade20k_pan_seg.py [--root $DETECTRON2_DATASETS]
"""

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from mask_former.data.datasets.categories import ade20k_150_categories
from mask_former.data.io import rgb_to_ids

logger = logging.getLogger("prepare_ade20k_pan_seg")

HERE = Path(__file__).resolve().parent
SPLITS = {"train": "training", "val": "validation"}


def load_instance_class_map(path: Path = HERE / "ade20k_instance_catid_mapping.txt") -> Dict:
    """Instance class (1..100) -> 0-based ADE20K-150 class."""
    mapping = {}
    for line in path.read_text().splitlines()[1:]:  # header: Instacne100 SceneParse150 ...
        fields = line.split()
        if len(fields) >= 2:
            mapping[int(fields[0])] = int(fields[1]) - 1
    return mapping


def load_image_ids(path: Path = HERE / "ade20k_instance_imgCatIds.json") -> Dict[str, int]:
    with open(path) as f:
        return {img["file_name"]: img["id"] for img in json.load(f)["images"]}


def categories_json() -> List[dict]:
    return [
        {
            "id": c["id"],
            "name": c["name"],
            "isthing": c["isthing"],
            "color": c["color"],
            "supercategory": "thing" if c["isthing"] else "stuff",
        }
        for c in ade20k_150_categories()
    ]


def _segment_info(mask: np.ndarray, segment_id: int, category_id: int) -> dict:
    ys, xs = np.nonzero(mask)
    return {
        "id": int(segment_id),
        "category_id": int(category_id),
        "iscrowd": 0,
        "area": int(mask.sum()),
        "bbox": [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ],
    }


def panoptic_from_annotations(
    semantic: np.ndarray, instance: np.ndarray, categories: List[dict], instance_map: Dict
) -> Tuple[np.ndarray, List[dict]]:
    """
    Args:
        semantic: (H, W) SceneParsing labels (0 = other, k = class k - 1).
        instance: (H, W, 3) instance annotation (R = instance class, G = instance id).

    Returns:
        (H, W, 3) uint8 panoptic RGB and the segments_info list.
    """
    from panopticapi.utils import IdGenerator

    id_gen = IdGenerator({c["id"]: c for c in categories})
    pan = np.zeros(semantic.shape + (3,), dtype=np.uint8)
    segments = []
    selections = []
    for label in np.unique(semantic):
        category = int(label) - 1
        if category >= 0 and not categories[category]["isthing"]:
            selections.append((semantic == label, category))
    inst_class = instance[..., 0].astype(np.int64)
    inst_id = instance[..., 1].astype(np.int64)
    keys = np.unique((inst_class * 256 + inst_id)[inst_class > 0])
    for cls, idx in zip((keys // 256).tolist(), (keys % 256).tolist()):
        if cls not in instance_map:
            raise ValueError(f"Instance class {cls} is not in ade20k_instance_catid_mapping.txt")
        selections.append(((inst_class == cls) & (inst_id == idx), instance_map[cls]))
    for mask, category in selections:
        segment_id, color = id_gen.get_id_and_color(category)
        pan[mask] = color
        segments.append((mask, segment_id, category))
    # Later (thing) segments may have covered parts of earlier ones: measure what is left.
    ids = rgb_to_ids(pan)
    infos = [_segment_info(ids == sid, sid, cat) for _, sid, cat in segments if (ids == sid).any()]
    return pan, infos


def convert_split(base: Path, split: str, categories, instance_map, image_ids) -> dict:
    folder = SPLITS[split]
    out_dir = base / f"ade20k_panoptic_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_path in sorted((base / "images" / folder).glob("*.jpg")):
        stem = image_path.stem
        sem_path = base / "annotations" / folder / f"{stem}.png"
        inst_path = base / "annotations_instance" / folder / f"{stem}.png"
        for path in (sem_path, inst_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} (for image {image_path}) does not exist.")
        if image_path.name not in image_ids:
            raise KeyError(f"{image_path.name} is not in ade20k_instance_imgCatIds.json")
        semantic = np.asarray(Image.open(sem_path))
        instance = np.asarray(Image.open(inst_path).convert("RGB"))
        if semantic.shape != instance.shape[:2]:
            raise ValueError(f"{sem_path} and {inst_path} differ in size.")
        pan, infos = panoptic_from_annotations(semantic, instance, categories, instance_map)
        Image.fromarray(pan).save(out_dir / f"{stem}.png")
        image_id = image_ids[image_path.name]
        h, w = semantic.shape
        images.append({"id": image_id, "file_name": image_path.name, "width": w, "height": h})
        annotations.append(
            {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos}
        )
    return {"images": images, "annotations": annotations, "categories": categories}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"))
    args = parser.parse_args(argv)
    base = Path(args.root) / "ADEChallengeData2016"
    categories = categories_json()
    instance_map = load_instance_class_map()
    image_ids = load_image_ids()
    np.random.seed(0)  # IdGenerator draws thing colours from numpy's global generator
    for split in SPLITS:
        data = convert_split(base, split, categories, instance_map, image_ids)
        with open(base / f"ade20k_panoptic_{split}.json", "w") as f:
            json.dump(data, f)
        logger.info("%s: %d images", split, len(data["images"]))
    print(f"Wrote {base}/ade20k_panoptic_{{train,val}}[.json]")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

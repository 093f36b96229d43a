# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The loader of COCO-format panoptic annotations (a JSON with "images" and "annotations", one
panoptic PNG per image) whose images may also have a semantic label map; the panoptic
registrations of this package read their datasets with it.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from detectron2.utils.file_io import PathManager

__all__ = ["load_panoptic_json"]


def load_panoptic_json(
    json_file: str,
    image_dir: str,
    panoptic_dir: str,
    semantic_dir: Optional[str],
    thing_dataset_id_to_contiguous_id: Mapping[int, int],
    stuff_dataset_id_to_contiguous_id: Mapping[int, int],
    *,
    image_ext: str = ".jpg",
) -> List[Dict[str, Any]]:
    """
    Load a COCO-format panoptic dataset whose images may also have a semantic label map.

    Args:
        json_file: the panoptic JSON ("images", "annotations" with "segments_info").
        image_dir, panoptic_dir: folders of the images and of the panoptic PNGs.
        semantic_dir: folder of semantic PNGs named like the images (or None).
        thing_dataset_id_to_contiguous_id, stuff_dataset_id_to_contiguous_id: category id
            maps; a category in the thing map is a thing, otherwise it must be in the stuff map.

    Returns:
        list[dict]: detectron2 records with file_name, image_id, height, width,
        pan_seg_file_name, segments_info (contiguous ``category_id`` and ``isthing``), and
        sem_seg_file_name when ``semantic_dir`` is given.
    """
    with PathManager.open(json_file) as f:
        data = json.load(f)
    images = {img["id"]: img for img in data.get("images", [])}
    records = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        stem = os.path.splitext(ann["file_name"])[0]
        record = {
            "file_name": os.path.join(image_dir, stem + image_ext),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": [
                _convert_segment(
                    seg,
                    thing_dataset_id_to_contiguous_id,
                    stuff_dataset_id_to_contiguous_id,
                    json_file,
                )
                for seg in ann["segments_info"]
            ],
        }
        if image_id in images:
            record["height"] = images[image_id]["height"]
            record["width"] = images[image_id]["width"]
        if semantic_dir is not None:
            record["sem_seg_file_name"] = os.path.join(semantic_dir, stem + ".png")
        records.append(record)
    if not records:
        raise ValueError(f"Panoptic annotation file {json_file} has no annotations.")
    for field in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        path = records[0].get(field)
        if path is not None and not PathManager.isfile(path):
            raise FileNotFoundError(f"{field} {path} (listed in {json_file}) does not exist.")
    return records


def _convert_segment(
    segment: Dict[str, Any],
    thing_map: Mapping[int, int],
    stuff_map: Mapping[int, int],
    json_file: str,
) -> Dict[str, Any]:
    segment = dict(segment)
    category_id = segment["category_id"]
    if category_id in thing_map:
        segment["category_id"] = thing_map[category_id]
        segment["isthing"] = True
    elif category_id in stuff_map:
        segment["category_id"] = stuff_map[category_id]
        segment["isthing"] = False
    else:
        raise ValueError(
            f"Segment {segment.get('id')} in {json_file} has category_id {category_id}, "
            "which is not a category of this dataset."
        )
    return segment

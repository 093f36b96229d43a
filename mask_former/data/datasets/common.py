# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Helpers shared by the dataset registrations: idempotent registration and a loader for
COCO-format panoptic annotations that also carry a semantic label map per image.
"""

import functools
import json
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.utils.file_io import PathManager

__all__ = [
    "datasets_root",
    "register_dataset",
    "register_sem_seg_splits",
    "set_missing_metadata",
    "load_panoptic_json",
]

logger = logging.getLogger(__name__)


def datasets_root() -> str:
    """The datasets root: ``$DETECTRON2_DATASETS``, default ``datasets`` (read at each call)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def register_dataset(
    name: str,
    loader: Callable[[], List[Dict[str, Any]]],
    metadata: Mapping[str, Any],
    *,
    key: str = "image_root",
) -> bool:
    """
    Register ``name`` in DatasetCatalog and set its metadata; safe to call more than once.

    A name that is already registered with the same ``metadata[key]`` (by default the image
    folder, which encodes the datasets root) is left as it is. A name registered with a
    different value (e.g. detectron2 registered it before ``$DETECTRON2_DATASETS`` changed) is
    replaced, since detectron2 refuses to overwrite metadata in place.

    Returns:
        bool: True if the name was (re-)registered, False if it was already registered.
    """
    if name in DatasetCatalog.list():
        current = MetadataCatalog.get(name).get(key, None)
        if current == metadata.get(key):
            return False
        logger.info("Re-registering dataset %r: %s %r -> %r", name, key, current, metadata.get(key))
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    return True


def register_sem_seg_splits(
    splits: Mapping[str, tuple],
    metadata: Mapping[str, Any],
    *,
    gt_ext: str,
    image_ext: str = "jpg",
) -> List[str]:
    """
    Register semantic-segmentation splits read with detectron2's ``load_sem_seg``.

    Args:
        splits: dataset name -> (image folder, label folder).
        metadata: metadata shared by the splits; ``image_root``, ``sem_seg_root`` and
            ``evaluator_type`` ("sem_seg" unless given) are added per split.
        gt_ext, image_ext: file extensions of the label maps and of the images.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    registered = []
    for name, (image_dir, gt_dir) in splits.items():
        meta = {"evaluator_type": "sem_seg", **metadata}
        meta.update(image_root=image_dir, sem_seg_root=gt_dir)
        loader = functools.partial(
            load_sem_seg, gt_dir, image_dir, gt_ext=gt_ext, image_ext=image_ext
        )
        if register_dataset(name, loader, meta):
            registered.append(name)
    return registered


def panoptic_class_metadata(categories: List[Dict[str, Any]]) -> Dict[str, Any]:
    """
    Class names, colours and id maps of a panoptic dataset whose contiguous id is the index in
    ``categories`` (dicts with "id", "name", "color", "isthing"). Both name lists hold every
    class, indexed by contiguous id (the visualizer's convention), and
    ``stuff_dataset_id_to_contiguous_id`` covers all classes because SemSegEvaluator maps every
    predicted label through it.
    """
    names = [c["name"] for c in categories]
    colors = [c["color"] for c in categories]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def set_missing_metadata(name: str, **metadata: Any) -> None:
    """Set metadata keys of ``name`` that are not set yet (detectron2 refuses to change them)."""
    meta = MetadataCatalog.get(name)
    missing = {k: v for k, v in metadata.items() if k not in meta.as_dict()}
    if missing:
        meta.set(**missing)


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

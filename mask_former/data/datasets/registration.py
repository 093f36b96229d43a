# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Helpers shared by the dataset registrations: the datasets root, idempotent registration,
semantic-segmentation splits read by detectron2's ``load_sem_seg``, and the class metadata of
a panoptic dataset. :mod:`.panoptic_json` loads the COCO-format panoptic annotations.
"""

import functools
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

__all__ = [
    "datasets_root",
    "register_dataset",
    "register_sem_seg_splits",
    "set_missing_metadata",
    "stuff_class_metadata",
    "panoptic_class_metadata",
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


def stuff_class_metadata(
    categories: Sequence[Mapping[str, Any]], *, name_key: str = "name"
) -> Dict[str, Any]:
    """
    ``stuff_classes`` and ``stuff_colors`` of a semantic-segmentation dataset whose contiguous
    class id is the index in ``categories`` (dicts with ``name_key`` and "color").
    """
    return {
        "stuff_classes": [c[name_key] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
    }


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

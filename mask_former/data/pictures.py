# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Pictures of a registered dataset's ground truth, drawn with detectron2's ``Visualizer``
(class names on the segments, the metadata's colours): ``tools/visualize_data.py`` writes one
picture per record.

Two sources, as detectron2's ``tools/visualize_data.py``:

- "annotation": the record's files as stored, read as the mappers read them
  (:mod:`mask_former.data.mappers.reading`, on :mod:`mask_former.data.io`): the panoptic PNG
  with its ``segments_info`` when the record has one, else the semantic label map;
- "dataloader": what the model is trained on: the record after the config's train mapper
  (augmentation, crop, padding), its targets drawn: one region per target mask
  (``instances.gt_masks`` and ``gt_classes``), things as instances where the mapper makes
  panoptic targets (the semantic mapper makes one target per class: class regions).

A record whose files cannot be read or drawn is skipped with the reader's message; the
others are still drawn. Colours are reproducible: a record is drawn alike in every run.

Shape shorthand in this module: H, W image height and width; N target masks.
"""

import dataclasses
import logging
import os
import random
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..inference.drawing import _reproducible_colours
from ..utils.atomic_io import atomic_output_path
from .io import rgb_to_ids
from .mappers import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    build_train_mapper,
)
from .mappers.reading import read_image, read_label_map, read_panoptic_rgb

__all__ = [
    "SOURCES",
    "PicturesResult",
    "dataset_records",
    "draw_record",
    "draw_targets",
    "picture_names",
    "write_pictures",
]

logger = logging.getLogger(__name__)

SOURCES = ("annotation", "dataloader")
# Ground truth drawn half-transparent, every segment however small (as detectron2's tool).
_ALPHA = 0.5
# Errors of a bad record or file: the readers' DataError (a ValueError, as detectron2's
# SizeMismatchError) and DataFileNotFoundError (a FileNotFoundError).
_RECORD_ERRORS = (ValueError, FileNotFoundError)


@dataclasses.dataclass
class PicturesResult:
    """What :func:`write_pictures` did: the files written and the records it skipped."""

    written: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)  # one message per record


def _thing_ids(metadata: Metadata) -> Set[int]:
    return set(metadata.get("thing_dataset_id_to_contiguous_id", {}).values())


def _segments(segments_info: Sequence[Dict[str, Any]], thing_ids: Set[int]) -> List[Dict]:
    """Copies (the Visualizer writes into them) with ``isthing`` filled in where a loader left
    it out: a category is a thing when the metadata's thing map has it."""
    return [{"isthing": s["category_id"] in thing_ids, **s} for s in segments_info]


def draw_record(record: Dict[str, Any], metadata: Metadata, scale: float = 1.0) -> np.ndarray:
    """
    The drawing of one record's stored ground truth over its image: the panoptic segments
    (``pan_seg_file_name`` and ``segments_info``) when it has them, else the semantic label
    map (``sem_seg_file_name``; the ignore label and values that are no class not drawn).

    Returns:
        np.ndarray: (H * scale, W * scale, 3) uint8 RGB.

    Raises:
        DataError, DataFileNotFoundError: naming the file that cannot be read or that does
            not fit its image, or the record that has no ground truth.
    """
    record = dict(record)  # the reader fills in a missing height/width
    rgb = read_image(record, "RGB")
    visualizer = Visualizer(rgb, metadata, scale=scale)
    with _reproducible_colours(0):
        if "pan_seg_file_name" in record and "segments_info" in record:
            ids = rgb_to_ids(read_panoptic_rgb(record, rgb.shape[:2]))
            segments = _segments(record["segments_info"], _thing_ids(metadata))
            visualizer.draw_panoptic_seg(
                torch.as_tensor(ids), segments, area_threshold=0, alpha=_ALPHA
            )
        elif "sem_seg_file_name" in record:
            labels = read_label_map(record, "sem_seg_file_name", rgb.shape[:2])
            visualizer.draw_sem_seg(labels.astype(np.int64), area_threshold=0, alpha=_ALPHA)
        else:
            raise _no_ground_truth(record)
    return visualizer.output.get_image()


def _no_ground_truth(record: Dict[str, Any]) -> ValueError:
    return ValueError(
        f"Record of {record.get('file_name')!r} has neither 'pan_seg_file_name' with "
        "'segments_info' nor 'sem_seg_file_name': no ground truth to draw"
    )


def draw_targets(
    mapped: Dict[str, Any],
    metadata: Metadata,
    *,
    image_format: str,
    panoptic: bool,
    scale: float = 1.0,
) -> np.ndarray:
    """
    The drawing of a train mapper's output: its targets over its (augmented, padded) image.

    Args:
        mapped: the mapper's dict: "image" (3, H, W) uint8 tensor in ``image_format`` and
            "instances" with ``gt_masks`` (N, H, W) bool and ``gt_classes`` (N,) contiguous
            class ids.
        panoptic: the targets are panoptic segments (things drawn as instances); else one
            target per class, drawn as class regions.

    Returns:
        np.ndarray: (H * scale, W * scale, 3) uint8 RGB.
    """
    rgb = convert_image_to_rgb(mapped["image"].permute(1, 2, 0), image_format)
    instances = mapped["instances"]
    masks, classes = instances.gt_masks, instances.gt_classes.tolist()
    masks = masks.tensor if hasattr(masks, "tensor") else masks  # BitMasks or a bool tensor
    ids = torch.zeros(tuple(masks.shape[-2:]), dtype=torch.int64)
    for index, mask in enumerate(masks):
        ids[mask.bool()] = index + 1  # 0: no target
    thing_ids = _thing_ids(metadata) if panoptic else set()
    segments = [
        {"id": i + 1, "category_id": c, "isthing": c in thing_ids} for i, c in enumerate(classes)
    ]
    visualizer = Visualizer(np.asarray(rgb, dtype=np.uint8), metadata, scale=scale)
    with _reproducible_colours(0):
        visualizer.draw_panoptic_seg(ids, segments, area_threshold=0, alpha=_ALPHA)
    return visualizer.output.get_image()


def picture_names(records: Sequence[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """
    A file name per ``(dataset name, record)``: the image's name as PNG ("000001.png"),
    prefixed with the dataset's name when there are several datasets, and "-2", "-3", ...
    added where names would repeat.
    """
    several = len({name for name, _ in records}) > 1
    names, used = [], set()
    for dataset, record in records:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        stem = f"{dataset}__{stem}" if several else stem
        name, count = f"{stem}.png", 1
        while name in used:
            count += 1
            name = f"{stem}-{count}.png"
        used.add(name)
        names.append(name)
    return names


def dataset_records(names: Sequence[str], num: Optional[int]) -> List[Tuple[str, Dict]]:
    """The first ``num`` (all when None) ``(dataset name, record)`` of the datasets, in order."""
    records: List[Tuple[str, Dict]] = []
    for name in names:
        records += [(name, r) for r in DatasetCatalog.get(name)]
        if num is not None and len(records) >= num:
            break
    return records[:num]


def _drawer(cfg: Optional[CfgNode], source: str, scale: float) -> Callable[[str, Dict], np.ndarray]:
    """A function (dataset name, record) -> drawing for the source."""
    if source == "annotation":
        return lambda name, record: draw_record(record, MetadataCatalog.get(name), scale)
    if source != "dataloader":
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if cfg is None:
        raise ValueError("source 'dataloader' needs a config: its train mapper augments")
    mapper = build_train_mapper(cfg)
    if mapper is None:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME {cfg.INPUT.DATASET_MAPPER_NAME!r} is not a MaskFormer "
            "train mapper: there are no MaskFormer targets to draw"
        )

    # Their targets are panoptic segments (the semantic mapper's: one per class).
    panoptic = isinstance(mapper, (MaskFormerPanopticDatasetMapper, DETRPanopticDatasetMapper))

    def draw(name: str, record: Dict) -> np.ndarray:
        return draw_targets(
            mapper(record),
            MetadataCatalog.get(name),
            image_format=cfg.INPUT.FORMAT,
            panoptic=panoptic,
            scale=scale,
        )

    return draw


def write_pictures(
    dataset_names: Sequence[str],
    output_dir: str,
    *,
    source: str = "annotation",
    cfg: Optional[CfgNode] = None,
    num: Optional[int] = None,
    scale: float = 1.0,
    seed: Optional[int] = 0,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> PicturesResult:
    """
    Draw the ground truth of each record of the registered datasets into ``output_dir`` (made
    if missing), one PNG per record (names: :func:`picture_names`), each written atomically.

    Args:
        source: "annotation" (as stored) or "dataloader" (after the train mapper of ``cfg``).
        cfg: the config whose train mapper (INPUT.DATASET_MAPPER_NAME, INPUT.*) maps the
            records; needed for "dataloader".
        num: draw only the first ``num`` records.
        scale: the pictures' size relative to the (mapped) images.
        seed: seeds Python's and NumPy's generators, which the augmentations draw from, so
            that "dataloader" pictures are the same in every run; None: not seeded.
        progress: wraps the iteration over records (e.g. ``tqdm.tqdm``), or None.

    Raises:
        ValueError: a bad ``source``, no ``cfg`` for "dataloader", or the config's mapper
            cannot be built (e.g. its NUM_CLASSES is not the dataset's).
    """
    draw = _drawer(cfg, source, scale)
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
    records = dataset_records(dataset_names, num)
    os.makedirs(output_dir, exist_ok=True)
    result = PicturesResult()
    items = list(zip(picture_names(records), records))
    for file_name, (name, record) in progress(items) if progress else items:
        try:
            drawing = draw(name, record)
        except _RECORD_ERRORS as e:
            result.skipped.append(f"{name}: {e}".split("\n", 1)[0])
            logger.warning("Skipped a record of %s: %s", name, result.skipped[-1])
            continue
        path = os.path.join(output_dir, file_name)
        with atomic_output_path(path) as tmp:
            Image.fromarray(drawing).save(tmp, format="PNG")
        result.written.append(path)
    return result

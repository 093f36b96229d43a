# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Reading, checking, padding and target building shared by the dataset mappers.

Shape shorthand in this module: H, W image height and width; N number of target masks.
Label maps are kept as float64 while they go through the transforms: detectron2 resizes
non-uint8 arrays with torch (nearest), which keeps uint16 and large panoptic ids exact.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances
from detectron2.utils.file_io import PathManager

__all__ = [
    "read_image",
    "read_label_map",
    "read_panoptic_ids",
    "check_label_range",
    "check_segments",
    "image_to_tensor",
    "pad_to_divisibility",
    "semantic_instances",
    "panoptic_instances",
]


def _require_file(path: str, what: str, dataset_dict: Dict[str, Any]) -> None:
    if not PathManager.isfile(path):
        raise FileNotFoundError(
            f"{what} {path!r} does not exist (dataset record of image "
            f"{dataset_dict.get('file_name')!r})."
        )


def read_image(dataset_dict: Dict[str, Any], image_format: str) -> np.ndarray:
    """
    Read ``dataset_dict["file_name"]`` in ``image_format`` (grayscale and RGBA files are
    converted, EXIF orientation is applied) and check it against the record's height/width.

    Returns:
        np.ndarray: (H, W, C) uint8 image.
    """
    path = dataset_dict["file_name"]
    _require_file(path, "Image file", dataset_dict)
    image = utils.read_image(path, format=image_format)
    utils.check_image_size(dataset_dict, image)
    return image


def read_label_map(
    dataset_dict: Dict[str, Any], field: str, image_shape: Tuple[int, int]
) -> np.ndarray:
    """
    Read the single-channel label map ``dataset_dict[field]`` (8- or 16-bit PNG/TIFF).

    Returns:
        np.ndarray: (H, W) float64 labels.
    """
    path = dataset_dict[field]
    _require_file(path, f"Label map ({field})", dataset_dict)
    labels = utils.read_image(path)
    if labels.ndim != 2:
        raise ValueError(
            f"Label map {path!r} has shape {labels.shape}; a single-channel image is expected."
        )
    _check_same_size(labels, image_shape, path, dataset_dict)
    return labels.astype(np.float64)


def read_panoptic_ids(dataset_dict: Dict[str, Any], image_shape: Tuple[int, int]) -> np.ndarray:
    """
    Read the COCO panoptic PNG ``dataset_dict["pan_seg_file_name"]`` as segment ids
    (id = R + 256 G + 256^2 B).

    Returns:
        np.ndarray: (H, W) float64 segment ids, 0 = VOID.
    """
    path = dataset_dict["pan_seg_file_name"]
    _require_file(path, "Panoptic PNG", dataset_dict)
    rgb = utils.read_image(path, "RGB").astype(np.int64)
    _check_same_size(rgb, image_shape, path, dataset_dict)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]).astype(np.float64)


def _check_same_size(labels: np.ndarray, image_shape, path: str, dataset_dict) -> None:
    if tuple(labels.shape[:2]) != tuple(image_shape):
        raise ValueError(
            f"Label map {path!r} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
            f"{dataset_dict.get('file_name')!r} is {image_shape[1]}x{image_shape[0]}."
        )


def check_label_range(
    labels: np.ndarray, num_classes: Optional[int], ignore_label: int, path: str
) -> None:
    """Raise if a label is neither a class id in [0, num_classes) nor ``ignore_label``."""
    if num_classes is None:
        return
    # Two vectorised comparisons instead of np.unique: this runs on every training sample.
    outside = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_label)
    if outside.any():
        bad = np.unique(labels[outside])
        raise ValueError(
            f"Label map {path!r} has label(s) {bad.astype(np.int64).tolist()} outside the "
            f"class range [0, {num_classes}) that are not the ignore label {ignore_label}."
        )


def check_segments(
    pan_ids: np.ndarray,
    segments_info: Sequence[Dict[str, Any]],
    num_classes: Optional[int],
    path: str,
) -> None:
    """Raise if a listed segment is absent from the panoptic PNG or has a bad category."""
    for segment in segments_info:
        # One comparison per segment: much cheaper than np.unique's sort of every pixel, and
        # this runs on every training sample.
        if not np.any(pan_ids == segment["id"]):
            raise ValueError(
                f"Segment id {segment['id']} (category {segment['category_id']}) of "
                f"segments_info does not occur in the panoptic PNG {path!r}."
            )
        category = segment["category_id"]
        if num_classes is not None and not 0 <= category < num_classes:
            raise ValueError(
                f"Segment id {segment['id']} of {path!r} has category_id {category}, outside "
                f"the contiguous class range [0, {num_classes})."
            )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array -> (C, H, W) uint8 tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def pad_to_divisibility(tensor: torch.Tensor, size_divisibility: int, value: float) -> torch.Tensor:
    """
    Pad the last two dims (H, W) on the bottom and right up to the next multiple of
    ``size_divisibility`` with ``value``; a no-op when ``size_divisibility <= 0``.

    With the model-zoo configs (images never larger than SIZE_DIVISIBILITY = the crop size)
    this pads to exactly SIZE_DIVISIBILITY, as the original does; a larger image is padded up
    to the next multiple rather than cropped.
    """
    if size_divisibility <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    pad_h = -h % size_divisibility
    pad_w = -w % size_divisibility
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, [0, pad_w, 0, pad_h], value=value).contiguous()


def _instances(
    image_shape: Tuple[int, int], classes: List[int], masks: List[torch.Tensor]
) -> Instances:
    instances = Instances(image_shape)
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        instances.gt_masks = torch.stack(masks)
    else:
        instances.gt_masks = torch.zeros((0, *image_shape), dtype=torch.bool)
    return instances


def semantic_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """
    One target per class present in ``sem_seg`` ((H, W) long), the ignore label excluded.

    Returns:
        Instances of image size (H, W) with ``gt_classes`` (N,) int64 (ascending) and
        ``gt_masks`` (N, H, W) bool.
    """
    classes = [int(c) for c in torch.unique(sem_seg) if int(c) != ignore_label]
    masks = [sem_seg == c for c in classes]
    return _instances(tuple(sem_seg.shape), classes, masks)


def panoptic_instances(pan_seg: torch.Tensor, segments_info: Sequence[Dict[str, Any]]) -> Instances:
    """
    One target per non-crowd segment of ``pan_seg`` ((H, W) segment ids), in segments_info
    order. Crowd segments are dropped, and so are segments that the augmentation cropped away
    entirely (an empty target mask has nothing to match).

    Returns:
        Instances of image size (H, W) with ``gt_classes`` (N,) int64 and ``gt_masks``
        (N, H, W) bool.
    """
    classes, masks = [], []
    for segment in segments_info:
        if segment.get("iscrowd", 0):
            continue
        mask = pan_seg == segment["id"]
        if not mask.any():
            continue
        classes.append(int(segment["category_id"]))
        masks.append(mask)
    return _instances(tuple(pan_seg.shape), classes, masks)

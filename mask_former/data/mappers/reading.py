# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Reading and checking the files of a dataset record, shared by the dataset mappers: the image,
the semantic label map and the COCO panoptic PNG, each checked against the record (size,
label range, listed segments) with errors that name the file. The files are decoded by
:mod:`mask_former.data.io` (EXIF orientation, 16-bit grey, unreadable files: its
:class:`~mask_former.data.io.UnreadableImageError`); :mod:`.targets` turns what is read into
the mappers' tensors.

Shape shorthand in this module: H, W image height and width.

The label maps go through the transforms in the types the original MaskFormer gives them,
because detectron2 resizes them differently by dtype and the targets must hit the same pixels:
semantic label maps as float64 (resized with torch's "nearest", which also keeps uint16 labels
exact), the COCO panoptic PNG as its (H, W, 3) uint8 RGB (resized with PIL's NEAREST, which
samples other source pixels than torch's rule); segment ids are computed after the transforms
(:func:`mask_former.data.io.rgb_to_ids`).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

from .. import io as data_io
from ..errors import DataError, DataFileNotFoundError, ImageSizeMismatchError

__all__ = [
    "FILE_ROLES",
    "open_image",
    "read_image",
    "read_label_map",
    "read_panoptic_rgb",
    "check_label_range",
    "check_segments",
]

# The role of each file of a dataset record, as error messages name it (the doctor's too).
FILE_ROLES = {
    "file_name": "image",
    "sem_seg_file_name": "label map (sem_seg_file_name)",
    "pan_seg_file_name": "panoptic PNG (pan_seg_file_name)",
}


def _require_file(path: str, what: str, dataset_dict: Dict[str, Any]) -> None:
    if not PathManager.isfile(path):
        noun = "Image file" if what == "image" else what[:1].upper() + what[1:]
        raise DataFileNotFoundError(
            f"{noun} {path!r} does not exist (dataset record of image "
            f"{dataset_dict.get('file_name')!r})."
        )


def open_image(path: str, what: str, dataset_dict: Dict[str, Any]) -> Image.Image:
    """
    Open and decode the file ``path`` of ``dataset_dict`` (``what`` names its role in error
    messages) with :func:`mask_former.data.io.open_image`: upright per its EXIF orientation,
    modes as stored.

    Raises:
        DataFileNotFoundError: the file does not exist.
        UnreadableImageError: a DataError naming the file and why it is not readable: empty,
            not an image, too large, or truncated/corrupt (with the decoder's reason).
    """
    _require_file(path, what, dataset_dict)
    return data_io.open_image(path, what)


def _check_record_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """detectron2's ``check_image_size`` (which fills in a missing height/width), reworded."""
    try:
        utils.check_image_size(dataset_dict, image)
    except utils.SizeMismatchError:
        raise ImageSizeMismatchError(
            f"Image file {dataset_dict['file_name']!r} is {image.shape[1]}x{image.shape[0]} "
            f"(WxH) but its dataset record says {dataset_dict.get('width')}x"
            f"{dataset_dict.get('height')} (width x height)."
        ) from None


def read_image(dataset_dict: Dict[str, Any], image_format: str) -> np.ndarray:
    """
    Read ``dataset_dict["file_name"]`` in ``image_format`` and check it against the record's
    height/width (filled in where missing). As detectron2's ``read_image``, with EXIF
    orientation applied and grey, palette, RGBA and CMYK files converted; unlike it, 16-bit
    grey levels are scaled to 8 bits (detectron2 clips them at 255, a white image) and an
    unreadable file is an error that names it (see :func:`open_image`).

    Returns:
        np.ndarray: (H, W, C) uint8 image.
    """
    path = dataset_dict["file_name"]
    image = open_image(path, FILE_ROLES["file_name"], dataset_dict)
    array = data_io.pil_to_array(image, image_format)
    _check_record_size(dataset_dict, array)
    return array


def read_label_map(
    dataset_dict: Dict[str, Any], field: str, image_shape: Tuple[int, int]
) -> np.ndarray:
    """
    Read the single-channel label map ``dataset_dict[field]`` (8- or 16-bit PNG/TIFF).

    Returns:
        np.ndarray: (H, W) float64 labels.
    """
    path = dataset_dict[field]
    labels = np.asarray(open_image(path, f"label map ({field})", dataset_dict))
    if labels.ndim != 2:
        raise DataError(
            f"Label map {path!r} has shape {labels.shape}; a single-channel image is expected."
        )
    _check_same_size(labels, image_shape, path, dataset_dict)
    return labels.astype(np.float64)


def read_panoptic_rgb(dataset_dict: Dict[str, Any], image_shape: Tuple[int, int]) -> np.ndarray:
    """
    Read the COCO panoptic PNG ``dataset_dict["pan_seg_file_name"]`` as RGB.

    Returns:
        np.ndarray: (H, W, 3) uint8; :func:`mask_former.data.io.rgb_to_ids` turns it into
        segment ids.
    """
    path = dataset_dict["pan_seg_file_name"]
    image = open_image(path, FILE_ROLES["pan_seg_file_name"], dataset_dict)
    rgb = utils.convert_PIL_to_numpy(image, "RGB")
    _check_same_size(rgb, image_shape, path, dataset_dict)
    return rgb


def _check_same_size(labels: np.ndarray, image_shape, path: str, dataset_dict) -> None:
    if tuple(labels.shape[:2]) != tuple(image_shape):
        raise DataError(
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
        raise DataError(
            f"Label map {path!r} has label(s) {bad.astype(np.int64).tolist()} outside the "
            f"class range [0, {num_classes}) that are not the ignore label {ignore_label}."
        )


def check_segments(
    pan_ids: np.ndarray,
    segments_info: Sequence[Dict[str, Any]],
    num_classes: Optional[int],
    path: str,
) -> None:
    """
    Raise if a listed segment is absent from the panoptic PNG or has a bad category. Segments
    of the PNG that ``segments_info`` does not list are no ground truth (no target, like VOID),
    as in the original MaskFormer and in panopticapi's PQ; a JSON with some categories removed
    is one way to train on fewer classes.
    """
    for segment in segments_info:
        # One comparison per segment: much cheaper than np.unique's sort of every pixel, and
        # this runs on every training sample.
        if not np.any(pan_ids == segment["id"]):
            raise DataError(
                f"Segment id {segment['id']} (category {segment['category_id']}) of "
                f"segments_info does not occur in the panoptic PNG {path!r}."
            )
        category = segment["category_id"]
        if num_classes is not None and not 0 <= category < num_classes:
            raise DataError(
                f"Segment id {segment['id']} of {path!r} has category_id {category}, outside "
                f"the contiguous class range [0, {num_classes})."
            )

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Reading and checking the files of a dataset record, shared by the dataset mappers: the image,
the semantic label map and the COCO panoptic PNG, each checked against the record (size,
label range, listed segments) with errors that name the file. :mod:`.targets` turns what is
read into the mappers' tensors.

Shape shorthand in this module: H, W image height and width.

The label maps go through the transforms in the types the original MaskFormer gives them,
because detectron2 resizes them differently by dtype and the targets must hit the same pixels:
semantic label maps as float64 (resized with torch's "nearest", which also keeps uint16 labels
exact), the COCO panoptic PNG as its (H, W, 3) uint8 RGB (resized with PIL's NEAREST, which
samples other source pixels than torch's rule); segment ids are computed after the transforms.
"""

import io
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, DataFileNotFoundError, ImageSizeMismatchError

__all__ = [
    "open_image",
    "read_image",
    "read_label_map",
    "read_panoptic_rgb",
    "read_panoptic_ids",
    "rgb_to_ids",
    "check_label_range",
    "check_segments",
]

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the stored image upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Grey-level modes deeper than 8 bits, which PIL's convert() to RGB/L would clip at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_DEEP_MODES = _SIXTEEN_BIT_MODES + ("I", "F")


def _require_file(path: str, what: str, dataset_dict: Dict[str, Any]) -> None:
    if not PathManager.isfile(path):
        raise DataFileNotFoundError(
            f"{what} {path!r} does not exist (dataset record of image "
            f"{dataset_dict.get('file_name')!r})."
        )


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, as detectron2's ``read_image`` does."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a malformed EXIF block: detectron2 too keeps the stored orientation
        return image
    method = _UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def open_image(path: str, what: str, dataset_dict: Dict[str, Any]) -> Image.Image:
    """
    Open and decode the image file ``path`` (``what`` names its role in error messages) and
    turn it upright per its EXIF orientation.

    Raises:
        DataFileNotFoundError: the file does not exist.
        DataError: naming the file and why it is not readable: empty, not an image, or
            truncated/corrupt (with the decoder's reason).
    """
    _require_file(path, what, dataset_dict)
    with PathManager.open(path, "rb") as f:
        data = f.read()
    if not data:
        raise DataError(f"{what} {path!r} is an empty file (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise DataError(f"{what} {path!r} is not an image (unknown format).") from None
    except Exception as e:  # Pillow reports bad data as OSError, SyntaxError, ValueError, ...
        raise DataError(f"{what} {path!r} is truncated or corrupt ({e}).") from None
    return _upright(image)


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit) grey levels scaled to 8 bits ("L"); other images unchanged."""
    if image.mode not in _DEEP_MODES:
        return image
    levels = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES or levels.max(initial=0) > 255:
        levels = levels / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")


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
    image = _to_8_bit(open_image(path, "Image file", dataset_dict))
    array = utils.convert_PIL_to_numpy(image, image_format)
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
    labels = np.asarray(open_image(path, f"Label map ({field})", dataset_dict))
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
        np.ndarray: (H, W, 3) uint8; :func:`rgb_to_ids` turns it into segment ids.
    """
    path = dataset_dict["pan_seg_file_name"]
    rgb = utils.convert_PIL_to_numpy(open_image(path, "Panoptic PNG", dataset_dict), "RGB")
    _check_same_size(rgb, image_shape, path, dataset_dict)
    return rgb


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """
    COCO panoptic colours to segment ids: id = R + 256 G + 256^2 B (panopticapi's rgb2id).

    Args:
        rgb: (H, W, 3) uint8.

    Returns:
        np.ndarray: (H, W) int64 segment ids, 0 = VOID.
    """
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_panoptic_ids(dataset_dict: Dict[str, Any], image_shape: Tuple[int, int]) -> np.ndarray:
    """
    The segment ids of the COCO panoptic PNG ``dataset_dict["pan_seg_file_name"]``, untransformed.
    Mappers transform :func:`read_panoptic_rgb`'s colours instead, and take ids afterwards.

    Returns:
        np.ndarray: (H, W) int64 segment ids, 0 = VOID.
    """
    return rgb_to_ids(read_panoptic_rgb(dataset_dict, image_shape))


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

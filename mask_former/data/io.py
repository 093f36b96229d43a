# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Reading image files: the only code of the project that turns a file into pixels. The dataset
mappers, the dataset doctor, the Predictor and the demo all read through it, so they accept
the same files, turn them the same way and reject bad ones with the same words.

* :func:`open_image`: a decoded PIL image, upright per its EXIF orientation (as detectron2's
  ``read_image``), label maps and 16-bit files untouched.
* :func:`read_image`: an (H, W, C) uint8 array in a channel format ("RGB", "BGR", "L"): 16-bit
  (and 32-bit) grey levels scaled to 8 bits, palette, grey, CMYK and RGBA converted.
* :class:`UnreadableImageError`: the one error, "Cannot read <what> <path>: <reason>", the
  reason one of "no such file", "empty file (0 bytes)", "not an image (unknown format)",
  "too large (N pixels; the limit is M)", "truncated or corrupt (<decoder's words>)".
* :data:`IMAGE_EXTENSIONS` and :func:`list_images`: which files of a folder are images.
* :func:`rgb_to_ids` / :func:`ids_to_rgb`: COCO panoptic PNG colours and segment ids.

Shape shorthand in this module: H, W image height and width; C channels.
"""

import io
import os
from typing import List, Optional, Union

import numpy as np
from detectron2.data import detection_utils as d2_utils
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "image_pixel_limit",
    "ids_to_rgb",
    "list_images",
    "open_image",
    "pil_to_array",
    "read_image",
    "rgb_to_ids",
    "to_8_bit",
    "upright",
]

PathLike = Union[str, "os.PathLike[str]"]

# The file names read as images (compared lower-case) by folder inputs everywhere.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the stored image upright (detectron2's table).
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


class UnreadableImageError(DataError):
    """
    A file that is not a readable image. ``path`` is the file, ``reason`` says why in a few
    words, ``what`` is the file's role ("image", "label map (sem_seg_file_name)", ...).
    A ValueError (through :class:`~mask_former.data.errors.DataError`).
    """

    def __init__(self, path: str, reason: Optional[str] = None, what: str = "image"):
        if reason is None:  # one message only: PyTorch re-raising a DataLoader worker's error
            super().__init__(path)
            self.path, self.reason, self.what = "", path, what
            return
        super().__init__(f"Cannot read {what} {path}: {reason}")
        self.path, self.reason, self.what = path, reason, what


def image_pixel_limit() -> Optional[int]:
    """The most pixels an image file may declare: Pillow's ``Image.MAX_IMAGE_PIXELS``."""
    return Image.MAX_IMAGE_PIXELS


def upright(image: Image.Image) -> Image.Image:
    """
    ``image`` turned as its EXIF orientation says, as detectron2's ``read_image`` does; an
    image without (or with a malformed) EXIF block is returned as it is.
    """
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a malformed EXIF block: detectron2 too keeps the stored orientation
        return image
    method = _UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with PathManager.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file", what) from None
    except IsADirectoryError:
        raise UnreadableImageError(path, "a folder, not a file", what) from None
    except OSError as e:
        raise UnreadableImageError(path, e.strerror or type(e).__name__, what) from None
    if not data:
        raise UnreadableImageError(path, "empty file (0 bytes)", what)
    return data


def _decode(data: bytes, path: str, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image (unknown format)", what) from None
    except Image.DecompressionBombError:
        image = None  # Pillow refuses at twice its limit; the check below says it in our words
    except Exception as e:  # Pillow reports bad headers as OSError, SyntaxError, ValueError...
        raise UnreadableImageError(path, f"truncated or corrupt ({e})", what) from None
    limit = image_pixel_limit()
    if image is None or (limit is not None and image.width * image.height > limit):
        pixels = _declared_pixels(data) if image is None else image.width * image.height
        raise UnreadableImageError(path, f"too large ({pixels} pixels; the limit is {limit})", what)
    try:
        image.load()
    except Exception as e:  # truncated data, bad chunks, ...
        raise UnreadableImageError(path, f"truncated or corrupt ({e})", what) from None
    return image


def _declared_pixels(data: bytes) -> str:
    """The pixel count a file's header declares, read with Pillow's limit lifted."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return str(image.width * image.height)
    except Exception:
        return "more than twice Pillow's limit of"
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def open_image(path: PathLike, what: str = "image") -> Image.Image:
    """
    Read and decode the image file ``path``, upright per its EXIF orientation. Modes are kept
    as stored (a label map stays one channel, 16-bit levels stay 16-bit).

    Args:
        path: a local path, or any path detectron2's PathManager opens.
        what: the file's role, for the error message.

    Raises:
        UnreadableImageError: naming the file and the reason (see the module's doc).
    """
    path = os.fspath(path)
    return upright(_decode(_read_bytes(path, what), path, what))


def to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit) grey levels scaled to 8 bits ("L", 65535 -> 255); others unchanged."""
    if image.mode not in _DEEP_MODES:
        return image
    levels = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES or levels.max(initial=0) > 255:
        levels = levels / 257.0
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")


def pil_to_array(image: Image.Image, image_format: str = "RGB") -> np.ndarray:
    """
    A decoded PIL image as an (H, W, C) uint8 array in ``image_format`` ("RGB", "BGR", "L"
    or detectron2's "YUV-BT.601"): deep grey levels scaled by :func:`to_8_bit`, then
    detectron2's ``convert_PIL_to_numpy`` (palette, grey, CMYK converted; alpha dropped).
    The image is not turned: call :func:`upright` first where it may carry EXIF.
    """
    return d2_utils.convert_PIL_to_numpy(to_8_bit(image), image_format)


def read_image(path: PathLike, image_format: str = "RGB", what: str = "image") -> np.ndarray:
    """
    Read the image file ``path`` as an (H, W, C) uint8 array in ``image_format``, upright per
    EXIF (see :func:`open_image` and :func:`pil_to_array`). Like detectron2's ``read_image``,
    except that 16-bit grey is scaled to 8 bits (detectron2 clips it at 255: a white image) and
    a bad file raises :class:`UnreadableImageError`.
    """
    return pil_to_array(open_image(path, what), image_format)


def list_images(folder: PathLike, *, recursive: bool = False) -> List[str]:
    """
    The image files of ``folder`` (names ending in :data:`IMAGE_EXTENSIONS`, any case), sorted;
    with ``recursive`` also those of its subfolders.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder!r} is not a folder")
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """
    COCO panoptic colours to segment ids: id = R + 256 G + 256^2 B (panopticapi's rgb2id).

    Args:
        rgb: (H, W, 3) uint8 (or any integer type).

    Returns:
        np.ndarray: (H, W) int64 segment ids, 0 = VOID.
    """
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """
    Segment ids to COCO panoptic colours, the inverse of :func:`rgb_to_ids`.

    Args:
        ids: (H, W) integer segment ids in [0, 256^3).

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must be in [0, 256^3), got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The documented import path of the Python API for inference; the code lives in
:mod:`mask_former.inference` (the Predictor and its results) and :mod:`mask_former.data.io`
(image files).
"""

import os
from typing import Optional, Sequence, Union

import numpy as np
from detectron2.config import CfgNode

from .config import load_config
from .data.io import IMAGE_EXTENSIONS, UnreadableImageError, list_images, read_image
from .inference.predictor import Predictor, image_to_rgb
from .inference.results import Prediction, Segment
from .inference.results import class_metadata as predictor_metadata

__all__ = [
    "IMAGE_EXTENSIONS",
    "Predictor",
    "Prediction",
    "Segment",
    "UnreadableImageError",
    "build_predictor_cfg",
    "image_to_rgb",
    "list_images",
    "predictor_metadata",
    "read_image_file",
]


def read_image_file(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """
    An image file as (H, W, 3) uint8 **RGB**, upright per EXIF, 16-bit grey scaled to 8 bits
    (:func:`mask_former.data.io.read_image`).

    Raises:
        UnreadableImageError: naming the file and the reason.
    """
    return read_image(path, "RGB")


def build_predictor_cfg(
    config: Union[str, "os.PathLike[str]", CfgNode],
    weights: Optional[str] = None,
    opts: Sequence[str] = (),
    device: Optional[str] = None,
) -> CfgNode:
    """The frozen config of a :class:`Predictor` (:func:`mask_former.load_config`)."""
    return load_config(config, opts, weights=weights, device=device)

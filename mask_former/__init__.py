# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
MaskFormer for detectron2. Importing this package registers the meta-architecture, heads,
pixel decoders, backbone, dataset mappers and datasets into detectron2's registries.
"""

from . import d2_compat

d2_compat.install()  # before anything imports detectron2
from .safe_loading import install_safe_loading  # noqa: E402

install_safe_loading()  # DetectionCheckpointer reads files without running code from them

from . import data, modeling  # noqa: F401,E402
from .config import add_mask_former_config, get_mask_former_cfg, load_config  # noqa: E402

# The public names of the original MaskFormer package.
from .data import (  # noqa: E402
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from .engine import SemanticSegmentorWithTTA  # noqa: E402
from .inference import Predictor  # noqa: E402
from .modeling import MaskFormer  # noqa: E402

__all__ = [
    "add_mask_former_config",
    "get_mask_former_cfg",
    "load_config",
    "MaskFormer",
    "SemanticSegmentorWithTTA",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
    "Predictor",
]
__version__ = "0.1.0"

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Device selection for the command-line entry points."""

import logging

import torch
from detectron2.config import CfgNode

__all__ = ["fall_back_to_cpu"]

logger = logging.getLogger(__name__)


def fall_back_to_cpu(cfg: CfgNode) -> CfgNode:
    """
    Set MODEL.DEVICE to "cpu" (in place) when it asks for CUDA on a machine without it, so the
    model-zoo configs (written for GPUs) run anywhere; returns ``cfg``.
    """
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but CUDA is not available: using the CPU.", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    return cfg

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Training and evaluation: Trainer, optimizer, CPU-capable launch, test-time augmentation."""

from ..config import get_mask_former_cfg
from .defaults import build_cfg, default_setup, runs_on_cpu, setup
from .evaluation import build_evaluator
from .launch import launch
from .optimizer import (
    build_optimizer,
    build_param_groups,
    scale_lr_by_module,
    set_weight_decay_by_module_type,
    with_full_model_gradient_clipping,
)
from .trainer import Trainer
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "Trainer",
    "build_cfg",
    "build_evaluator",
    "build_optimizer",
    "build_param_groups",
    "default_setup",
    "get_mask_former_cfg",
    "launch",
    "runs_on_cpu",
    "scale_lr_by_module",
    "set_weight_decay_by_module_type",
    "setup",
    "SemanticSegmentorWithTTA",
    "with_full_model_gradient_clipping",
]

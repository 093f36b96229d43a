# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Test-time augmentation for semantic segmentation: multi-scale resizing and horizontal flips.

Shape shorthand in this module: K classes, H/W the original image height/width.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]


def _is_flipped(transforms) -> bool:
    """Whether a TransformList holds an odd number of horizontal flips."""
    flips = sum(isinstance(t, HFlipTransform) for t in getattr(transforms, "transforms", []))
    return flips % 2 == 1


class SemanticSegmentorWithTTA(nn.Module):
    """
    Wraps a semantic segmentation model (MaskFormer or detectron2's SemanticSegmentor) for
    test-time augmentation. Each input is resized to every TEST.AUG.MIN_SIZES (and flipped when
    TEST.AUG.FLIP); the model's "sem_seg" outputs, which it returns at the original resolution
    (the input's "height"/"width"), are flipped back where needed and averaged.
    """

    @configurable
    def __init__(self, model: nn.Module, *, tta_mapper, batch_size: int = 1):
        """
        Args:
            model: the model; a DistributedDataParallel wrapper is unwrapped.
            tta_mapper: callable mapping one model input (dict with "image", "height",
                "width") to a list of augmented inputs, each with its "transforms".
            batch_size: number of augmented inputs per forward pass.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if batch_size < 1:
            raise ValueError(f"SemanticSegmentorWithTTA: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tta_mapper = tta_mapper
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        return {
            "model": model,
            "tta_mapper": tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg),
            "batch_size": batch_size,
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            batched_inputs: model inputs as produced by the test data loader.

        Returns:
            one dict per input with "sem_seg": the averaged scores, shape (K, H, W).
        """
        return [self._inference_one_image(x) for x in batched_inputs]

    def _inference_one_image(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        augmented = self.tta_mapper(inputs)
        total: Optional[torch.Tensor] = None
        for start in range(0, len(augmented), self.batch_size):
            chunk = augmented[start : start + self.batch_size]
            with torch.no_grad():
                outputs = self.model(
                    [{k: v for k, v in a.items() if k != "transforms"} for a in chunk]
                )
            for aug, out in zip(chunk, outputs):
                scores = out["sem_seg"]
                if _is_flipped(aug["transforms"]):
                    scores = scores.flip(dims=[2])
                total = scores if total is None else total + scores
        return {"sem_seg": total / len(augmented)}

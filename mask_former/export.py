# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The documented import path of the export-friendly MaskFormer; the code lives in
:mod:`mask_former.inference.exportable` and :mod:`mask_former.inference.export` (which
imports neither onnx nor onnxruntime until one of its functions needs them).
"""

from .inference.export import _floor_division_for_onnx, export_onnx  # noqa: F401
from .inference.exportable import (
    ExportableMaskFormer,
    last_layer_only,
    padded_size,
    raw_mask_logits,
    semantic_scores,
)

__all__ = [
    "ExportableMaskFormer",
    "export_onnx",
    "last_layer_only",
    "padded_size",
    "raw_mask_logits",
    "semantic_scores",
]

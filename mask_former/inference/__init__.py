# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Inference with a trained model, one implementation for every front-end (the Python API,
``demo/demo.py``, ``demo/app.py``, ``tools/export_model.py`` and the benchmark):

* :mod:`.predictor`: :class:`Predictor`, in-process and batched, and :func:`image_to_rgb`.
* :mod:`.results`: :class:`Prediction`, :class:`Segment` and :func:`class_metadata`.
* :mod:`.workers`: :class:`ParallelPredictor`, Predictors in worker processes.
* :mod:`.drawing`: :class:`PredictionVisualizer`, :func:`draw_prediction` and
  :func:`draw_frame` (detectron2's Visualizer; imported on first use: it loads matplotlib).
* :mod:`.views`: a Prediction as pictures, a segments table and downloadable files (the web
  demo's, ``demo/app.py``; imported by name, it needs no web framework).
* :mod:`.exportable`: :class:`ExportableMaskFormer`, the traceable form of the model.
* :mod:`.export`: ONNX export and onnxruntime helpers (imported on first use; onnx and
  onnxruntime only when a function needs them).
"""

import importlib
from typing import Any

from .exportable import ExportableMaskFormer
from .predictor import ERROR_CHOICES, Predictor, image_to_rgb
from .results import Prediction, Segment, class_metadata
from .workers import ParallelPredictor, WorkerError, default_num_workers

__all__ = [
    "ERROR_CHOICES",
    "ExportableMaskFormer",
    "ParallelPredictor",
    "Prediction",
    "PredictionVisualizer",
    "Predictor",
    "Segment",
    "WorkerError",
    "class_metadata",
    "default_num_workers",
    "draw_frame",
    "draw_prediction",
    "image_to_rgb",
]

_LAZY = {"PredictionVisualizer": "drawing", "draw_frame": "drawing", "draw_prediction": "drawing"}


def __getattr__(name: str) -> Any:
    """The drawing names, imported on first use (detectron2's Visualizer loads matplotlib)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

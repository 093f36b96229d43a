# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The report of a training run (``tools/report.py OUTPUT_DIR``; ``make demo`` writes one for the
main job): ``report.html`` and its figures in the run's output folder.

* :mod:`.inputs`: the run's files (config.yaml, metrics.json, the last checkpoint) and the
  series of metrics.json;
* :mod:`.validation`: one pass of the inference front-end over the validation set: confusion
  matrix, per-class PQ, drawings of the first images;
* :mod:`.figures`: the matplotlib figures;
* :mod:`.page`: the HTML page;
* :mod:`.build`: :func:`write_report`, which puts them together.

Not imported by ``import mask_former`` (it loads matplotlib).
"""

from .build import FIGURES_DIR, REPORT_FILE, write_report
from .inputs import ReportInputError, find_run_files, read_metrics
from .validation import accumulate_confusion, accumulate_panoptic_quality, evaluate_validation

__all__ = [
    "FIGURES_DIR",
    "REPORT_FILE",
    "ReportInputError",
    "accumulate_confusion",
    "accumulate_panoptic_quality",
    "evaluate_validation",
    "find_run_files",
    "read_metrics",
    "write_report",
]

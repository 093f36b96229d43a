# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
:func:`write_report`: ``report.html`` and its figures (``report_figures/*.png``) in a run's
output folder, from the run's files and one pass over its validation set.

Nothing is written until every input has been read and every number computed. The figures are
drawn into a hidden temporary folder that replaces ``report_figures/`` when all are saved, and
the page is written last, atomically: a failed report leaves the folder as it was (an earlier
report included).
"""

import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..utils.atomic_io import atomic_write
from . import figures
from .inputs import RunMetrics, find_run_files, read_metrics
from .page import ReportContent, headline_keys, render_page
from .validation import ValidationResults, evaluate_validation

__all__ = ["FIGURES_DIR", "FIGURE_FILES", "REPORT_FILE", "write_report"]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
FIGURES_DIR = "report_figures"
# Each figure's file in FIGURES_DIR.
FIGURE_FILES = {
    "loss": "loss.png",
    "evaluation": "evaluation.png",
    "metrics": "metrics.png",
    "per_class": "per_class.png",
    "confusion": "confusion.png",
    "predictions": "predictions.jpg",
}


def _class_iou(
    metrics: RunMetrics, validation: ValidationResults
) -> Tuple[Optional[np.ndarray], str]:
    """Per-class IoU: the evaluation's (metrics.json) when it has every class, else recomputed."""
    final = metrics.final
    logged = [final.get(f"sem_seg/IoU-{name}") for name in validation.class_names]
    if logged and all(v is not None for v in logged):
        return np.asarray(logged, dtype=np.float64), "metrics.json"
    return validation.class_iou(), "computed by this report from the confusion matrix"


def _draw_figures(
    metrics: RunMetrics,
    validation: ValidationResults,
    class_iou: Optional[np.ndarray],
    targets: Mapping[str, float],
) -> Dict[str, Figure]:
    """Figure name -> figure, for the figures the run has data for."""
    final = metrics.final
    drawn = {
        "loss": figures.loss_figure(metrics),
        "evaluation": figures.evaluation_figure(metrics),
        "metrics": figures.final_metrics_figure(final, headline_keys(final, targets), targets),
        "per_class": figures.per_class_figure(
            validation.class_names, validation.thing_ids, class_iou, validation.class_pq()
        ),
        "confusion": None
        if validation.confusion is None
        else figures.confusion_figure(validation.confusion, validation.class_names),
        "predictions": figures.samples_figure(validation.samples),
    }
    return {name: fig for name, fig in drawn.items() if fig is not None}


def _publish(output_dir: str, drawn: Mapping[str, Figure], page: str) -> str:
    """
    Save the figures into a temporary folder; then, with the page written to its temporary
    file, swap the folder in, and rename the page into place.
    """
    tmp = tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.", dir=output_dir)
    target = os.path.join(output_dir, FIGURES_DIR)
    path = os.path.join(output_dir, REPORT_FILE)
    old = None
    try:
        for name, fig in drawn.items():
            figures.save_figure(fig, os.path.join(tmp, FIGURE_FILES[name]))
        os.chmod(tmp, 0o755)
        with atomic_write(path, "w") as f:
            f.write(page)
            if os.path.exists(target):
                old = tempfile.mkdtemp(prefix=f".{FIGURES_DIR}.old.", dir=output_dir)
                os.rename(target, os.path.join(old, FIGURES_DIR))
            os.rename(tmp, target)
        return path
    finally:
        for leftover in (tmp, old):
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


def write_report(
    output_dir: str,
    *,
    targets: Optional[Mapping[str, float]] = None,
    dataset: Optional[str] = None,
    num_samples: int = 12,
    max_images: Optional[int] = None,
    batch_size: int = 4,
    progress: bool = False,
) -> str:
    """
    Write ``output_dir/report.html`` (and ``output_dir/report_figures/``) for the
    ``train_net.py`` run in ``output_dir``: its loss curves, its results over training, the
    final metrics against ``targets``, per-class IoU and PQ, the semantic confusion matrix and
    input | ground truth | prediction drawings of the first ``num_samples`` validation images.

    Args:
        output_dir: the run's folder, with config.yaml, metrics.json and a checkpoint.
        targets: metric key ("panoptic_seg/PQ") -> target value in %.
        dataset: the registered dataset to evaluate on; None: the config's DATASETS.TEST[0].
        num_samples: validation images to draw.
        max_images: evaluate the first ``max_images`` validation images only (None: all).
        batch_size: images per model call.
        progress: show a progress bar on stderr during the pass over the validation set.

    Returns:
        the path of report.html.

    Raises:
        ReportInputError: a file of the run is missing or unreadable, or the dataset is not
            registered (the message names the file or the dataset).
        mask_former.checkpoint.CheckpointError: the checkpoint cannot be used.
        mask_former.data.io.UnreadableImageError, ValueError: a bad image or ground truth.
    """
    start = time.perf_counter()
    targets = dict(targets or {})
    files = find_run_files(output_dir)
    metrics = read_metrics(files.metrics)
    validation = evaluate_validation(
        files.config,
        files.checkpoint,
        dataset=dataset,
        max_images=max_images,
        num_samples=num_samples,
        batch_size=batch_size,
        progress=progress,
    )
    measured = time.perf_counter()
    class_iou, source = _class_iou(metrics, validation)
    drawn = _draw_figures(metrics, validation, class_iou, targets)
    paths = {name: f"{FIGURES_DIR}/{FIGURE_FILES[name]}" for name in drawn}
    content = ReportContent(files, metrics, validation, targets, paths, class_iou, source)
    path = _publish(files.output_dir, drawn, render_page(content))
    logger.info(
        "Wrote %s in %.1f s (validation pass %.1f s)",
        path,
        time.perf_counter() - start,
        measured - start,
    )
    return path

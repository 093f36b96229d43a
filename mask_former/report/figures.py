# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The report's figures, drawn with matplotlib's object API: a ``Figure`` rendered by the Agg
canvas when saved, so no pyplot state, no global backend and no window are involved.

Each ``*_figure`` function returns a Figure, or None when the run has nothing to show for it;
:func:`save_figure` writes one.

Shape shorthand in this module: K classes; H, W image height and width.
"""

import math
import os
from typing import List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from matplotlib.figure import Figure

from ..utils.atomic_io import atomic_output_path
from .inputs import RunMetrics
from .validation import Sample

__all__ = [
    "LOSS_PANELS",
    "confusion_figure",
    "evaluation_figure",
    "final_metrics_figure",
    "loss_figure",
    "per_class_figure",
    "samples_figure",
    "save_figure",
]

# The losses of a MaskFormer, one panel each: key -> title.
LOSS_PANELS = {
    "total_loss": "total (weighted sum)",
    "loss_ce": "class (cross-entropy)",
    "loss_mask": "mask (focal)",
    "loss_dice": "mask (dice)",
}
# Evaluation results plotted over the iterations evaluated, and how.
EVALUATION_CURVES = {
    "panoptic_seg/PQ": ("PQ", "-"),
    "panoptic_seg/PQ_th": ("PQ things", ":"),
    "panoptic_seg/PQ_st": ("PQ stuff", "--"),
    "sem_seg/mIoU": ("mIoU", "-"),
}
OK_COLOR, BELOW_COLOR, PLAIN_COLOR = "#2e8b57", "#c0392b", "#5b7db1"


def save_figure(fig: Figure, path: str, dpi: int = 100) -> None:
    """
    Write ``fig`` atomically as PNG, or as JPEG when ``path`` ends in ".jpg" (for drawings
    over photos, which PNG compresses badly).
    """
    jpeg = path.lower().endswith(".jpg")
    with atomic_output_path(path) as tmp:
        if jpeg:
            fig.savefig(tmp, format="jpeg", dpi=dpi, pil_kwargs={"quality": 90})
        else:
            fig.savefig(tmp, format="png", dpi=dpi)


def _layer_keys(keys: Sequence[str], base: str) -> List[str]:
    """The deep-supervision variants of ``base`` (``loss_ce_0``, ``loss_ce_1``, ...), in order."""
    found = [k for k in keys if k.startswith(base + "_") and k[len(base) + 1 :].isdigit()]
    return sorted(found, key=lambda k: int(k[len(base) + 1 :]))


def _loss_panels(keys: Sequence[str]) -> List[Tuple[str, str]]:
    """(key, title) of each panel: the MaskFormer losses logged, then any other loss."""
    panels = [(k, title) for k, title in LOSS_PANELS.items() if k in keys]
    variants = {v for k in keys for v in _layer_keys(keys, k)}
    others = [k for k in keys if k not in LOSS_PANELS and k not in variants]
    return panels + [(k, k) for k in others]


def loss_figure(metrics: RunMetrics) -> Optional[Figure]:
    """
    One panel per loss over the iterations: the total, class, mask and dice losses as logged
    (weighted), the last decoder layer's bold and the deep-supervision layers' (``loss_ce_0``
    = decoder layer 1, ...) thin.
    """
    keys = metrics.loss_keys()
    panels = _loss_panels(keys)
    if not panels:
        return None
    rows = math.ceil(len(panels) / 2)
    fig = Figure(figsize=(10, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, 2, sharex=True, squeeze=False).ravel())
    for ax, (key, title) in zip(axes, panels):
        layers = _layer_keys(keys, key)
        for i, variant in enumerate(layers):
            ax.plot(*metrics.series(variant), lw=0.8, alpha=0.6, label=f"decoder layer {i + 1}")
        label = f"decoder layer {len(layers) + 1} (last)" if layers else None
        ax.plot(*metrics.series(key), lw=1.8, color="black", label=label)
        ax.set_title(f"{title}: {key}", fontsize=10)
        ax.grid(alpha=0.3)
        if layers:
            ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-2:]:
        ax.set_xlabel("iteration")
    fig.suptitle("Training losses (median of each logging period)")
    return fig


def evaluation_figure(metrics: RunMetrics) -> Optional[Figure]:
    """PQ (all, things, stuff) and mIoU at each iteration evaluated."""
    curves = [(k, *style) for k, style in EVALUATION_CURVES.items()]
    curves = [c for c in curves if metrics.series(c[0], evaluation=True)[0]]
    if not curves:
        return None
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for key, label, style in curves:
        iterations, values = metrics.series(key, evaluation=True)
        ax.plot(iterations, values, style, marker="o", label=f"{label} ({values[-1]:.2f})")
    evaluated = sorted(metrics.evaluations)
    ax.set_xlim(0, max(metrics.last_iteration, 1) * 1.03)
    ax.set_xlabel("iteration")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    once = f": evaluated once, at iteration {evaluated[0]}" if len(evaluated) == 1 else ""
    ax.set_title("Validation results over training" + once)
    return fig


def final_metrics_figure(
    final: Mapping[str, float], keys: Sequence[str], targets: Mapping[str, float]
) -> Optional[Figure]:
    """
    The final value of each of ``keys`` as a bar, green when it reaches its target (a black
    tick), red when below, blue without a target.
    """
    keys = [k for k in keys if k in final]
    if not keys:
        return None
    fig = Figure(figsize=(8, 0.45 * len(keys) + 1.2), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(keys))[::-1]
    values = [final[k] for k in keys]
    colors = [
        PLAIN_COLOR if k not in targets else OK_COLOR if final[k] >= targets[k] else BELOW_COLOR
        for k in keys
    ]
    ax.barh(positions, values, color=colors)
    for y, key, value in zip(positions, keys, values):
        ax.text(value + 1, y, f"{value:.2f}", va="center", fontsize=9)
        if key in targets:
            ax.plot([targets[key]] * 2, [y - 0.45, y + 0.45], color="black", lw=2.5)
            ax.text(targets[key] + 1, y - 0.3, f"target {targets[key]:g}", fontsize=8)
    ax.set_yticks(positions, keys)
    ax.set_xlim(0, 110)
    ax.set_xlabel("%")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Final validation metrics" + (" against the targets" if targets else ""))
    return fig


def per_class_figure(
    class_names: Sequence[str],
    thing_ids: Set[int],
    iou: Optional[Sequence[float]],
    pq: Mapping[int, Mapping[str, float]],
) -> Optional[Figure]:
    """
    Grouped bars per class: IoU (K values in %, NaN for none) and PQ (class id -> {"pq"}).
    Thing classes are marked "(thing)".
    """
    series = []
    if iou is not None:
        series.append(("IoU", np.asarray(iou, dtype=np.float64)))
    if pq:
        values = [pq[i]["pq"] if i in pq else np.nan for i in range(len(class_names))]
        series.append(("PQ", np.asarray(values, dtype=np.float64)))
    if not series:
        return None
    num = len(class_names)
    fig = Figure(figsize=(max(6.0, 0.8 * num * len(series) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    for s, (label, values) in enumerate(series):
        x = np.arange(num) + (s - (len(series) - 1) / 2) * width
        bars = ax.bar(x, np.nan_to_num(values), width, label=label)
        if num <= 30:
            labels = ["n/a" if np.isnan(v) else f"{v:.0f}" for v in values]
            ax.bar_label(bars, labels, fontsize=7)
    names = [n + (" (thing)" if i in thing_ids else "") for i, n in enumerate(class_names)]
    ax.set_xticks(
        np.arange(num), names, rotation=45 if num > 8 else 0, ha="right" if num > 8 else "center"
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title("Per-class IoU and PQ")
    return fig


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]) -> Optional[Figure]:
    """
    The (K, K) confusion matrix, each row (ground-truth class) as % of its pixels, with the
    values written in the cells when K <= 20.
    """
    rows = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, 100.0 * confusion / np.maximum(rows, 1), 0.0)
    num = len(class_names)
    side = min(14.0, max(5.0, 0.55 * num + 2.5))
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the ground-truth class's pixels", shrink=0.8)
    if num <= 20:
        for (r, c), value in np.ndenumerate(share):
            color = "white" if value > 60 else "black"
            ax.text(c, r, f"{value:.1f}", ha="center", va="center", fontsize=8, color=color)
    if num <= 60:
        ax.set_xticks(np.arange(num), class_names, rotation=45, ha="right")
        ax.set_yticks(np.arange(num), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("Semantic confusion matrix (rows sum to 100%)")
    return fig


def samples_figure(samples: Sequence[Sample], per_row: int = 2) -> Optional[Figure]:
    """
    Input | ground truth | prediction of each sample, ``per_row`` samples side by side.
    """
    if not samples:
        return None
    rows = math.ceil(len(samples) / per_row)
    cols = 3 * min(per_row, len(samples))
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, sample in enumerate(samples):
        row, col = divmod(i, per_row)
        name = os.path.basename(sample.name)
        panels = zip(
            ("input", "ground truth", "prediction"),
            (sample.image, sample.ground_truth, sample.prediction),
        )
        for j, (title, image) in enumerate(panels):
            ax = axes[row, 3 * col + j]
            ax.imshow(image)
            ax.set_title(f"{name}: {title}" if j == 0 else title, fontsize=9)
    fig.suptitle("Validation images: input | ground truth | prediction")
    return fig

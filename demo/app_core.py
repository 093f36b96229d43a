# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The web demo's logic, without the web framework: which model to serve, reading uploads
through the project's image reader, predicting with the thresholds a person chose, and turning
one image's prediction into what the page shows (overlay, class map, legend, table rows) and
offers for download (the id map as PNG, the segments as JSON). ``demo/app.py`` lays these out
with Gradio; everything here runs and is tested without it.

Shape shorthand in this module: H, W image height and width; K classes.
"""

import dataclasses
import glob
import html
import json
import os
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode

from mask_former.data.datasets import datasets_root
from mask_former.data.io import UnreadableImageError, list_images, read_image
from mask_former.data.shapes_generator import shapes_dir
from mask_former.inference import Prediction, Predictor
from mask_former.inference.drawing import draw_prediction
from mask_former.inference.views import (
    TABLE_HEADERS,
    LegendEntry,
    SegmentRow,
    class_colours,
    class_map,
    colourise,
    enabled_tasks,
    id_map,
    id_map_image,
    legend,
    segment_rows,
    segments_document,
    task_view,
    thing_class_ids,
)
from mask_former.modeling import MaskFormer
from mask_former.utils import atomic_output_path, atomic_write

__all__ = [
    "AppError",
    "AppModel",
    "ImageResult",
    "PageView",
    "TABLE_HEADERS",
    "latest_demo_run",
    "legend_html",
    "named_uploads",
    "read_upload",
    "render",
    "resolve_model",
    "shapes_val_images",
    "status_html",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where `make demo` (dev/main_job.py) trains: output/demo_<YYYYmmdd_HHMMSS>/.
DEFAULT_RUNS_DIR = os.path.join(REPO, "output")
RUN_FILES = ("config.yaml", "model_final.pth")


class AppError(ValueError):
    """A problem with the app's arguments or model, told to the user in one line."""


def latest_demo_run(runs_dir: str) -> Optional[str]:
    """
    The newest ``demo_*`` folder of ``runs_dir`` that holds a finished run (``config.yaml`` and
    ``model_final.pth``), by name (``make demo`` names them by start time), or None.
    """
    runs = sorted(glob.glob(os.path.join(glob.escape(runs_dir), "demo_*")))
    finished = [r for r in runs if all(os.path.isfile(os.path.join(r, f)) for f in RUN_FILES)]
    return finished[-1] if finished else None


def resolve_model(
    config_file: Optional[str], weights: Optional[str], runs_dir: str = DEFAULT_RUNS_DIR
) -> Tuple[str, Optional[str]]:
    """
    The (config file, weights) to serve: both as given; ``weights`` alone with the
    ``config.yaml`` beside it; ``config_file`` alone with its MODEL.WEIGHTS (weights None);
    neither: the latest ``make demo`` run in ``runs_dir`` (:func:`latest_demo_run`).

    Raises:
        AppError: saying what to run or give when there is no model.
    """
    if config_file:
        return config_file, weights
    if weights:
        beside = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
        if not os.path.isfile(beside):
            raise AppError(f"--weights {weights}: no config.yaml beside it; give --config-file")
        return beside, weights
    run = latest_demo_run(runs_dir)
    if run is None:
        raise AppError(
            f"No trained model to serve: {runs_dir} has no demo_*/ folder with "
            f"{' and '.join(RUN_FILES)}. Run `make demo` first (it trains the shapes model on "
            "the CPU), or give --config-file and --weights."
        )
    return os.path.join(run, RUN_FILES[0]), os.path.join(run, RUN_FILES[1])


def shapes_val_images(root: Optional[str] = None, limit: int = 50) -> List[str]:
    """
    The first ``limit`` images of the shapes validation split (dataset ``shapes_panoptic_val``)
    under the datasets root ``root`` (default: $DETECTRON2_DATASETS, else ``datasets``); empty
    when it has not been generated (``make demo`` or ``python -m mask_former.data`` does).
    """
    folder = os.path.join(shapes_dir(root or datasets_root()), "images", "val")
    return list_images(folder)[:limit] if os.path.isdir(folder) else []


def named_uploads(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """
    ``(name, path)`` for each uploaded file: its file name, with " (2)", " (3)", ... added to
    a name already taken (the same picture uploaded twice stays two choices on the page).
    """
    named, taken = [], set()
    for path in paths:
        base = os.path.basename(path)
        name, k = base, 2
        while name in taken:
            name, k = f"{base} ({k})", k + 1
        taken.add(name)
        named.append((name, path))
    return named


def read_upload(path: str, name: Optional[str] = None) -> np.ndarray:
    """
    An uploaded file as (H, W, 3) uint8 RGB, read by :func:`mask_former.data.io.read_image`.

    Raises:
        UnreadableImageError: the reader's error, naming the file as the user called it
            (``name``, e.g. the uploaded file's own name) rather than the server's copy.
    """
    try:
        return read_image(path, "RGB")
    except UnreadableImageError as e:
        raise UnreadableImageError(name or path, e.reason, e.what) from None


@dataclasses.dataclass
class ImageResult:
    """One input of a request: its name and RGB image and prediction, or why it has none."""

    name: str
    rgb: Optional[np.ndarray] = None
    prediction: Optional[Prediction] = None
    error: Optional[str] = None


class AppModel:
    """
    The served model: a :class:`~mask_former.inference.Predictor` (one image per model call),
    the tasks its config enables, its class names, thing classes and colours. :meth:`predict`
    is safe to call from several threads (the page's requests): one runs the model at a time.
    """

    def __init__(self, config: str, weights: Optional[str] = None, *, device: Optional[str] = None):
        """
        Args:
            config, weights: as for :class:`~mask_former.inference.Predictor` (weights None:
                the config's MODEL.WEIGHTS).
            device: "cpu", "cuda", ...; None: the config's MODEL.DEVICE.
        """
        self.predictor = Predictor(config, weights, device=device, batch_size=1)
        self.cfg: CfgNode = self.predictor.cfg
        self.tasks = enabled_tasks(self.cfg)
        self.metadata = self.predictor.metadata
        self.class_names = self.predictor.class_names
        self.thing_ids = thing_class_ids(self.metadata)
        self.colours = class_colours(self.metadata, len(self.class_names))
        test = self.cfg.MODEL.MASK_FORMER.TEST
        self.object_mask_threshold = float(test.OBJECT_MASK_THRESHOLD)
        self.overlap_threshold = float(test.OVERLAP_THRESHOLD)
        self._lock = threading.Lock()

    @property
    def has_thresholds(self) -> bool:
        """Whether the panoptic thresholds change anything (a MaskFormer with panoptic on)."""
        return isinstance(self.predictor.model, MaskFormer) and "panoptic" in self.tasks

    def predict(
        self,
        uploads: Sequence[Tuple[str, str]],
        object_mask_threshold: Optional[float] = None,
        overlap_threshold: Optional[float] = None,
    ) -> List[ImageResult]:
        """
        Read and predict ``uploads`` ((name, path) pairs, in order) with the panoptic
        thresholds (MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD and OVERLAP_THRESHOLD; None:
        the config's). An unreadable file gets its reader's one-line message as ``error``; the
        others are predicted.

        Raises:
            ValueError: a threshold outside [0, 1].
        """
        omt = self.object_mask_threshold if object_mask_threshold is None else object_mask_threshold
        ovt = self.overlap_threshold if overlap_threshold is None else overlap_threshold
        for label, value in (("object-mask", omt), ("overlap", ovt)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"The {label} threshold must be in [0, 1], got {value}")
        results = []
        for name, path in uploads:
            try:
                results.append(ImageResult(name, rgb=read_upload(path, name)))
            except UnreadableImageError as e:
                results.append(ImageResult(name, error=str(e)))
        readable = [r for r in results if r.rgb is not None]
        with self._lock:
            model = self.predictor.model
            if isinstance(model, MaskFormer):  # read by every inference call (INFERENCE_OPTIONS)
                model.object_mask_threshold, model.overlap_threshold = float(omt), float(ovt)
            predictions = self.predictor.predict([r.rgb for r in readable])
        for result, prediction in zip(readable, predictions):
            result.prediction = dataclasses.replace(prediction, source=result.name)
        return results


@dataclasses.dataclass
class PageView:
    """
    What the page shows of one image for one task.

    Attributes:
        overlay: (H, W, 3) uint8 RGB drawing of the task's result over the image.
        class_map: (H, W, 3) uint8 RGB classes in their legend colours (black: none).
        legend: the classes of ``class_map``, largest first.
        rows: the segments' table rows; ``table``: their cells (:data:`TABLE_HEADERS`).
        files: the id map PNG and the segments JSON, written into the render's folder.
    """

    overlay: np.ndarray
    class_map: np.ndarray
    legend: List[LegendEntry]
    rows: List[SegmentRow]
    files: List[str]

    @property
    def table(self) -> List[list]:
        return [row.cells() for row in self.rows]


def _file_stem(name: str) -> str:
    stem = os.path.splitext(os.path.basename(name))[0]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"


def render(
    model: AppModel,
    result: ImageResult,
    task: str,
    out_dir: str,
    *,
    instance_threshold: float = 0.0,
) -> PageView:
    """
    The :class:`PageView` of a predicted image for ``task`` (one of ``model.tasks``), with its
    downloads written atomically into ``out_dir`` (created if needed) as
    ``<image stem>_<task>_ids.png`` and ``<image stem>_<task>_segments.json``.

    Args:
        instance_threshold: instances scoring below it are neither drawn nor listed.
    """
    if result.prediction is None:
        raise ValueError(f"{result.name} has no prediction: {result.error}")
    if task not in model.tasks:
        raise ValueError(f"task must be one of the model's {model.tasks}, got {task!r}")
    prediction = result.prediction.with_instances_above(instance_threshold)
    overlay = draw_prediction(result.rgb, task_view(prediction, task), model.metadata).get_image()
    classes = class_map(prediction)
    rows = segment_rows(prediction, task, model.thing_ids)
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{_file_stem(result.name)}_{task}"
    png_path = os.path.join(out_dir, f"{stem}_ids.png")
    json_path = os.path.join(out_dir, f"{stem}_segments.json")
    with atomic_output_path(png_path) as tmp:
        id_map_image(id_map(prediction, task), task).save(tmp, format="PNG")
    settings = {"instance_threshold": instance_threshold} if task == "instance" else {}
    if task == "panoptic" and model.has_thresholds:
        threshold_model = model.predictor.model
        settings = {
            "object_mask_threshold": threshold_model.object_mask_threshold,
            "overlap_threshold": threshold_model.overlap_threshold,
        }
    document = segments_document(
        prediction, task, rows, id_map_file=os.path.basename(png_path), settings=settings
    )
    with atomic_write(json_path, "w") as f:
        json.dump(document, f, indent=2)
    return PageView(
        overlay=np.ascontiguousarray(overlay),
        class_map=colourise(classes, model.colours),
        legend=legend(classes, model.class_names, model.colours),
        rows=rows,
        files=[png_path, json_path],
    )


def legend_html(entries: Sequence[LegendEntry]) -> str:
    """The legend as HTML: a colour swatch, the class name and its area in % per class."""
    if not entries:
        return "<p>No class.</p>"
    items = []
    for e in entries:
        colour = "#%02x%02x%02x" % tuple(e.colour)
        swatch = (
            f'<span style="display:inline-block;width:1em;height:1em;background:{colour};'
            'border:1px solid #444;vertical-align:middle;margin-right:0.4em"></span>'
        )
        items.append(
            f'<li class="legend-entry">{swatch}{html.escape(e.name)} ({e.area_percent:.1f}%)</li>'
        )
    return '<ul class="legend" style="list-style:none;padding-left:0">' + "".join(items) + "</ul>"


def status_html(results: Sequence[ImageResult]) -> str:
    """
    The request's status as HTML: one paragraph per unreadable input (the reader's message,
    class "error"), then how many images were predicted.
    """
    lines = [
        f'<p class="error" style="color:#b3261e">{html.escape(r.error)}</p>'
        for r in results
        if r.error
    ]
    done = sum(r.prediction is not None for r in results)
    if results:
        lines.append(f"<p>Predicted {done} of {len(results)} image(s).</p>")
    return "".join(lines)

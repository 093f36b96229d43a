# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The report's HTML page: one self-standing file (inline style, no script, nothing fetched from
elsewhere) whose figures are PNG files beside it. Every text taken from the run (paths, class
names, metric names) is escaped.

Shape shorthand in this module: K classes.
"""

import dataclasses
import datetime
import html
import os
from typing import List, Mapping, Optional, Sequence

import numpy as np

from .inputs import RunFiles, RunMetrics
from .validation import ValidationResults

__all__ = ["ReportContent", "SUMMARY_KEYS", "headline_keys", "render_page", "summary_keys"]

# The headline metrics, in this order (the others of the final evaluation follow).
SUMMARY_KEYS = (
    "panoptic_seg/PQ",
    "panoptic_seg/PQ_th",
    "panoptic_seg/PQ_st",
    "panoptic_seg/SQ",
    "panoptic_seg/RQ",
    "sem_seg/mIoU",
    "sem_seg/fwIoU",
    "sem_seg/mACC",
    "sem_seg/pACC",
)

_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 1.5em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name, table.info td { text-align: left; }
figure { margin: 0.8em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
.ok { color: #2e7d32; font-weight: bold; } .below { color: #c62828; font-weight: bold; }
"""


@dataclasses.dataclass
class ReportContent:
    """
    Everything the page shows.

    Attributes:
        files: the run's files.
        metrics: the series of its metrics.json.
        validation: what the pass over the validation set measured.
        targets: metric key -> target value (may be empty).
        figures: figure name ("loss", "evaluation", "metrics", "per_class", "confusion",
            "predictions") -> its path relative to the page; figures not drawn are absent.
        class_iou: (K,) IoU per class in % (NaN: none), or None.
        class_iou_source: where ``class_iou`` comes from, for the page.
    """

    files: RunFiles
    metrics: RunMetrics
    validation: ValidationResults
    targets: Mapping[str, float]
    figures: Mapping[str, str]
    class_iou: Optional[np.ndarray] = None
    class_iou_source: str = ""


def headline_keys(final: Mapping[str, float], targets: Mapping[str, float]) -> List[str]:
    """The headline metrics of the final evaluation, then the other metrics with a target."""
    return [k for k in SUMMARY_KEYS if k in final] + [k for k in targets if k not in SUMMARY_KEYS]


def summary_keys(final: Mapping[str, float], targets: Mapping[str, float]) -> List[str]:
    """The final metrics to list: the headline ones, the targets', then the other averages."""
    keys = headline_keys(final, targets)
    # Per-class results have a "-" in their name ("sem_seg/IoU-circle"); they have their table.
    others = sorted(k for k in final if k not in keys and "-" not in k.split("/", 1)[1])
    return keys + others


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.2f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """
    An HTML table (no header row without ``headers``); the first column is left-aligned.
    Cells are escaped unless ``raw``.
    """
    head = "".join(
        f"<th{' class=name' if i == 0 else ''}>{_e(h)}</th>" for i, h in enumerate(headers)
    )
    body = [f"<tr>{head}</tr>"] if headers else []
    for row in rows:
        cells = "".join(
            f"<td{' class=name' if i == 0 else ''}>{c if raw else _e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{''.join(body)}</table>"


def _figure(content: ReportContent, name: str, alt: str, caption: str = "") -> str:
    if name not in content.figures:
        return f'<p class="note">No figure: the run has no data for it ({_e(alt)}).</p>'
    caption_html = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_e(content.figures[name])}" alt="{_e(alt)}">{caption_html}</figure>'


def _header(content: ReportContent) -> str:
    files, validation = content.files, content.validation
    evaluated = f"{validation.num_images} of {validation.total_images} images"
    rows = [
        ("output folder", files.output_dir),
        ("config", os.path.basename(files.config)),
        ("checkpoint", os.path.basename(files.checkpoint)),
        ("last iteration logged", str(content.metrics.last_iteration)),
        ("validation set", f"{validation.dataset} ({evaluated})"),
        ("report written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")),
    ]
    title = f"Run report: {os.path.basename(files.output_dir)}"
    return f"<h1>{_e(title)}</h1>" + _table((), rows).replace("<table>", '<table class="info">')


def _final_section(content: ReportContent) -> str:
    final, targets = content.metrics.final, content.targets
    if not final:
        return "<h2>Final metrics</h2><p class=note>metrics.json has no evaluation results.</p>"
    rows = []
    for key in summary_keys(final, targets):
        value = final.get(key)
        target = targets.get(key)
        if target is None:
            verdict = ""
        elif value is not None and value >= target:
            verdict = '<span class="ok">reached</span>'
        else:
            verdict = '<span class="below">below target</span>'
        target_text = "" if target is None else f"&ge; {_e(f'{target:g}')}"
        rows.append((_e(key), _number(value), target_text, verdict)[: 4 if targets else 2])
    iteration = max(content.metrics.evaluations)
    headers = ("metric", "value (%)", "target", "")[: 4 if targets else 2]
    return (
        f"<h2>Final metrics</h2><p>Evaluation at iteration {iteration} (metrics.json).</p>"
        + _table(headers, rows, raw=True)
        + _figure(content, "metrics", "final metrics against the targets")
    )


def _training_section(content: ReportContent) -> str:
    evaluated = sorted(content.metrics.evaluations)
    once = (
        f"The run was evaluated once, at iteration {evaluated[0]}: TEST.EVAL_PERIOD N "
        "evaluates it every N iterations."
        if len(evaluated) == 1
        else ""
    )
    return (
        "<h2>Training</h2>"
        + _figure(
            content,
            "loss",
            "loss curves",
            "Losses as logged (weighted by the loss weights of the config); thin lines: the "
            "deep-supervision losses of the earlier decoder layers.",
        )
        + _figure(content, "evaluation", "PQ and mIoU over the iterations evaluated", once)
    )


def _recomputed_note(content: ReportContent) -> str:
    """How the numbers recomputed here compare with the evaluation's (they should agree)."""
    validation, final = content.validation, content.metrics.final
    parts = []
    pq = validation.class_pq()
    if pq:
        mean = float(np.mean([v["pq"] for v in pq.values()]))
        logged = final.get("panoptic_seg/PQ")
        parts.append(f"PQ {mean:.2f}" + (f" (metrics.json: {logged:.2f})" if logged else ""))
    iou = validation.class_iou()
    if iou is not None and not np.all(np.isnan(iou)):
        logged = final.get("sem_seg/mIoU")
        parts.append(
            f"mIoU {np.nanmean(iou):.2f}" + (f" (metrics.json: {logged:.2f})" if logged else "")
        )
    if not parts:
        return ""
    where = f"{validation.num_images} images of {validation.dataset}"
    return (
        f'<p class="note">Recomputed by this report on {_e(where)} with the last checkpoint: '
        f"{_e(', '.join(parts))}.</p>"
    )


def _per_class_section(content: ReportContent) -> str:
    validation, final = content.validation, content.metrics.final
    pq = validation.class_pq()
    rows = []
    for i, name in enumerate(validation.class_names):
        iou = None if content.class_iou is None else float(content.class_iou[i])
        counts = pq.get(i, {})
        rows.append(
            (
                name,
                "thing" if i in validation.thing_ids else "stuff",
                _number(iou),
                _number(final.get(f"sem_seg/ACC-{name}")),
                *(_number(counts.get(k)) for k in ("pq", "sq", "rq")),
                *(str(counts.get(k, "")) for k in ("tp", "fp", "fn")),
            )
        )
    headers = ("class", "kind", "IoU", "ACC", "PQ", "SQ", "RQ", "TP", "FP", "FN")
    sources = (
        f"IoU: {content.class_iou_source}; ACC: metrics.json; PQ, SQ, RQ and the segment counts "
        "(true positives, false positives, false negatives): computed by this report."
    )
    return (
        "<h2>Per class</h2>"
        + _figure(content, "per_class", "per-class IoU and PQ")
        + _table(headers, rows)
        + f'<p class="note">{_e(sources)}</p>'
        + _recomputed_note(content)
    )


def _validation_section(content: ReportContent) -> str:
    samples = len(content.validation.samples)
    return (
        "<h2>Confusion matrix</h2>"
        + _figure(
            content,
            "confusion",
            "semantic confusion matrix",
            "Each row: where the pixels of a ground-truth class went (ignored pixels left out).",
        )
        + "<h2>Predictions</h2>"
        + _figure(
            content,
            "predictions",
            "input, ground truth and prediction of validation images",
            f"The first {samples} validation images.",
        )
    )


def render_page(content: ReportContent) -> str:
    """The report as an HTML document."""
    title = f"Run report: {os.path.basename(content.files.output_dir)}"
    sections = (
        _header(content),
        _final_section(content),
        _training_section(content),
        _per_class_section(content),
        _validation_section(content),
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )

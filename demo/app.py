#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A local web page to try a segmentation model on your own images (Gradio, served on 127.0.0.1).

Usage:
    make app                      # installs requirements/app.txt (Gradio) into .venv
    .venv/bin/python demo/app.py [--config-file C] [--weights W] [--port P]

Without arguments it serves the latest ``make demo`` model (``output/demo_*/config.yaml`` and
``model_final.pth``). Upload one or several images, or pick a shapes validation image; the page
shows the result of the chosen task (panoptic, semantic, instance: those the model's config
enables) with class names, the class map with a colour legend and a table of segments, lets you
change the panoptic thresholds, and offers the id map (PNG) and the segments (JSON) for
download. Uploads are read by the project's image reader (``mask_former.data.io``): a file it
cannot read is named on the page with the reader's reason. Nothing is fetched from the network
(no analytics, fonts or scripts from elsewhere).

This script parses the arguments and lays out the page; the logic lives in ``demo/app_core.py``.
"""

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, List, Optional, Sequence, Tuple

from app_core import (
    DEFAULT_RUNS_DIR,
    TABLE_HEADERS,
    AppError,
    AppModel,
    ImageResult,
    legend_html,
    named_uploads,
    render,
    resolve_model,
    shapes_val_images,
    status_html,
)

from mask_former.checkpoint import UntrustedCheckpointError
from mask_former.utils.script_logging import setup_script_logging

logger = logging.getLogger("mask_former.app")

GRADIO_MISSING = (
    "demo/app.py needs Gradio, which is optional: run `make app` (it installs "
    "requirements/app.txt into .venv), then start the app again."
)
# System fonts only: the page loads no font from elsewhere.
SANS = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
# Result images: PNG (exact colours), no "share" button (it posts to a hosting service).
IMAGE_OUTPUT = dict(type="numpy", format="png", height=360, buttons=["download", "fullscreen"])


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (YAML)")
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="the model's checkpoint (default: the config's MODEL.WEIGHTS; alone: with the "
        "config.yaml beside it)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the config's MODEL.DEVICE)")
    parser.add_argument(
        "--runs-dir",
        default=DEFAULT_RUNS_DIR,
        metavar="DIR",
        help="where to look for the latest `make demo` run without --config-file/--weights "
        "(default: the repository's output/)",
    )
    return parser


def import_gradio():
    """Gradio with its analytics off, or AppError saying how to install it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise AppError(GRADIO_MISSING) from None
    return gradio


class Page:
    """The page's event handlers: thin calls into :mod:`app_core` for one served model."""

    def __init__(self, model: AppModel, work_dir: str):
        self.model, self.work_dir = model, work_dir

    def predict(
        self, uploads: List[Tuple[str, str]], omt: float, ovt: float, task: str, inst: float
    ) -> Tuple[Any, ...]:
        results = self.model.predict(uploads, omt, ovt) if uploads else []
        names = [r.name for r in results if r.prediction is not None]
        return (uploads, results, *self.show(results, names[0] if names else None, task, inst))

    def on_files(self, files: Optional[Sequence[str]], omt, ovt, task, inst) -> Tuple[Any, ...]:
        uploads = named_uploads(files or [])
        return self.predict(uploads, omt, ovt, task, inst)

    def on_example(self, example: Optional[str], omt, ovt, task, inst) -> Tuple[Any, ...]:
        uploads = [(os.path.basename(example), example)] if example else []
        return self.predict(uploads, omt, ovt, task, inst)

    def show(
        self, results: List[ImageResult], name: Optional[str], task: str, inst: float
    ) -> Tuple[Any, ...]:
        """status, image choice, overlay, class map, legend, table, downloads."""
        import gradio as gr

        done = [r for r in results if r.prediction is not None]
        chosen = next((r for r in done if r.name == name), done[0] if done else None)
        choice = gr.Dropdown(choices=[r.name for r in done], value=chosen.name if chosen else None)
        if chosen is None:
            empty = {"headers": TABLE_HEADERS, "data": []}
            return status_html(results), choice, None, None, "", empty, None
        view = render(
            self.model, chosen, task, tempfile.mkdtemp(dir=self.work_dir), instance_threshold=inst
        )
        table = {"headers": TABLE_HEADERS, "data": view.table}
        legend = legend_html(view.legend)
        return status_html(results), choice, view.overlay, view.class_map, legend, table, view.files


def _settings(gr, model: AppModel) -> Tuple[Any, ...]:
    """The task choice and the threshold sliders: (task, object-mask, overlap, instance)."""
    task = gr.Radio(model.tasks, value=model.tasks[0], label="Task", elem_id="task")
    omt = gr.Slider(
        0.0, 1.0, model.object_mask_threshold, step=0.05,
        label="Object-mask threshold (a kept query's least class probability)",
        interactive=model.has_thresholds, elem_id="object-mask-threshold",
    )  # fmt: skip
    ovt = gr.Slider(
        0.0, 1.0, model.overlap_threshold, step=0.05,
        label="Overlap threshold (least share of its own mask a segment keeps)",
        interactive=model.has_thresholds, elem_id="overlap-threshold",
    )  # fmt: skip
    inst = gr.Slider(
        0.0, 1.0, 0.5, step=0.05, label="Instances: least score shown",
        visible="instance" in model.tasks, elem_id="instance-threshold",
    )  # fmt: skip
    return task, omt, ovt, inst


def _results(gr) -> List[Any]:
    """The result components: status is added by the caller; image, overlay, ..., downloads."""
    chosen = gr.Dropdown(label="Image", choices=[], elem_id="chosen")
    with gr.Row():
        overlay = gr.Image(label="Result", elem_id="overlay", **IMAGE_OUTPUT)
        classes = gr.Image(label="Classes", elem_id="classes", **IMAGE_OUTPUT)
    legend = gr.HTML(elem_id="legend")
    table = gr.Dataframe(
        headers=TABLE_HEADERS, label="Segments", interactive=False, elem_id="segments"
    )
    downloads = gr.File(
        label="Downloads: id map (PNG), segments (JSON)", interactive=False, elem_id="downloads"
    )
    return [chosen, overlay, classes, legend, table, downloads]


def build_page(model: AppModel, examples: List[str], work_dir: str):
    """The Gradio Blocks of the page (not launched)."""
    gr = import_gradio()
    page = Page(model, work_dir)
    # Uploads are removed from Gradio's cache an hour after they came, and when the app stops.
    with gr.Blocks(
        title="MaskFormer demo", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as blocks:
        gr.Markdown("## MaskFormer: try the model on your images")
        uploads, results = gr.State([]), gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    label="Images (one or several)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="images",
                )
                example = gr.Dropdown(
                    choices=[(os.path.basename(p), p) for p in examples],
                    value=None,
                    label="... or a shapes validation image",
                    elem_id="example",
                    interactive=bool(examples),
                )
                task, omt, ovt, inst = _settings(gr, model)
                status = gr.HTML(elem_id="status")
            with gr.Column(scale=2):
                shown = [status, *_results(gr)]
        chosen = shown[1]
        settings = [omt, ovt, task, inst]
        for event in (files.upload, files.delete, files.clear):  # the files now in the box
            event(page.on_files, [files, *settings], [uploads, results, *shown])
        example.input(page.on_example, [example, *settings], [uploads, results, *shown])
        # Dragged or typed; while a prediction runs, only the latest value waits for its turn.
        for slider in (omt, ovt):
            slider.input(
                page.predict,
                [uploads, *settings],
                [uploads, results, *shown],
                trigger_mode="always_last",
            )
        for control in (task, chosen, inst):
            control.input(
                page.show, [results, chosen, task, inst], shown, trigger_mode="always_last"
            )
    return blocks


def _setup_logging() -> None:
    """The script's log set-up (:func:`mask_former.utils.script_logging.setup_script_logging`)."""
    setup_script_logging(logger, "app")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    """Serve the page until interrupted; returns the exit status (1: no model or no Gradio)."""
    args = get_parser().parse_args(argv)
    _setup_logging()
    try:
        config, weights = resolve_model(args.config_file, args.weights, args.runs_dir)
        gr = import_gradio()
        logger.info("Serving %s with weights %s", config, weights or "(the config's)")
        model = AppModel(config, weights, device=args.device)
    # AppError, CheckpointError, class names that do not fit; yacs: unknown key, wrong type.
    except (ValueError, KeyError, AssertionError, OSError, UntrustedCheckpointError) as e:
        logger.error("%s", e)
        return 1
    work_dir = tempfile.mkdtemp(prefix="mask_former_app_")
    # Stopped like Ctrl-C when terminated, so the server closes and the downloads are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        blocks = build_page(model, shapes_val_images(), work_dir)
        theme = gr.themes.Default(font=SANS, font_mono=MONO)
        blocks.launch(
            server_name="127.0.0.1",
            server_port=args.port,
            theme=theme,
            allowed_paths=[work_dir],
            footer_links=[],
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            enable_monitoring=False,
            show_error=True,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Draw the predictions of a MaskFormer (or per-pixel baseline) model on images, a video or a
webcam stream.

Usage:
    python demo/demo.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --input images/ photo.jpg "more/*.png" --output vis/ \
        --opts MODEL.WEIGHTS model_final.pkl MODEL.DEVICE cpu

``--input`` takes image files, directories (every image in them) and glob patterns. Files that
are not readable images are skipped, each with one line saying why; the others are drawn, and
the demo then exits with status 1 and the number skipped. Without ``--output`` the drawings
are shown in a window (Esc quits). ``--confidence-threshold`` only filters the instances that
are drawn; the thresholds of panoptic inference are config keys (``--opts``).

This script parses the arguments and names the files; the config comes from
``mask_former.load_config``, the images from ``mask_former.data.io``, and the prediction,
drawing and worker processes from ``mask_former.inference`` (the Python API's Predictor).
"""

import argparse
import functools
import glob
import logging
import os
import sys
import time
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np
import tqdm
from detectron2.config import CfgNode
from detectron2.utils.visualizer import VisImage
from PIL import Image
from tqdm.contrib.logging import logging_redirect_tqdm

from mask_former.checkpoint import CheckpointError, UntrustedCheckpointError
from mask_former.config import load_config
from mask_former.data.io import IMAGE_EXTENSIONS, UnreadableImageError, list_images, read_image
from mask_former.data.user_datasets import add_register_argument, import_registration
from mask_former.inference import Prediction
from mask_former.inference.drawing import PredictionVisualizer
from mask_former.utils import atomic_output_path
from mask_former.utils.script_logging import setup_script_logging

WINDOW_NAME = "MaskFormer"

logger = logging.getLogger("mask_former.demo")


class DemoError(ValueError):
    """A problem with an input or output of the demo, reported to the user in one line."""


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """
    The frozen config: --config-file, inference precision "auto" (bfloat16 where the CPU computes
    it natively, else float32), then --opts (which may set MODEL.MASK_FORMER.TEST.PRECISION);
    --confidence-threshold changes nothing.
    """
    return load_config(args.config_file, ["MODEL.MASK_FORMER.TEST.PRECISION", "auto", *args.opts])


def _num_workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 worker, got {value}")
    return value


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file",
        default="configs/ade20k-150/maskformer_R50_bs16_160k.yaml",
        metavar="FILE",
        help="path to config file",
    )
    parser.add_argument("--webcam", action="store_true", help="take inputs from the webcam")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument(
        "--input",
        nargs="+",
        help="image files, directories of images, or glob patterns such as 'dir/*.jpg'; "
        "unreadable files are skipped (one line each) and make the exit status 1",
    )
    parser.add_argument(
        "--output",
        help="a folder to save drawings to (created if needed), or for a single image file a "
        "file name with an image extension; without it, drawings are shown in a window. Each "
        "drawing is named after its input, extension included, so a.jpg and a.png stay distinct "
        "(a name without an image extension gets .png); inputs with the same name (ignoring "
        "case) get -2, -3, ... before the extension, in input order (dir1/a.png -> a.png, "
        "dir2/a.png -> a-2.png)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="only filters the drawn instances (models with instance inference): those scoring "
        "below this are not drawn (default: all the model returns). It does not change "
        "panoptic or semantic inference; for that set MODEL.MASK_FORMER.TEST."
        "OBJECT_MASK_THRESHOLD with --opts",
    )
    parser.add_argument(
        "--parallel",
        type=_num_workers,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="run the model in worker processes while this one reads and draws (for videos "
        "and many images): N workers, each with 1/N of the CPU threads (OMP_NUM_THREADS, else "
        "the cores); without N, one per GPU with CUDA, else 2",
    )
    add_register_argument(
        parser,
        ". Class names come from the config's registered test dataset, else from the "
        "checkpoint, else generic names 'class 0', ... (with a warning)",
    )
    parser.add_argument(
        "--opts",
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu; "
        "inference runs in MODEL.MASK_FORMER.TEST.PRECISION auto (bfloat16 where the CPU "
        "computes it natively, else float32) unless set here",
        default=[],
        nargs=argparse.REMAINDER,
    )
    return parser


@functools.lru_cache()
def setup_demo_logging() -> None:
    """The script's log set-up (:func:`mask_former.utils.script_logging.setup_script_logging`)."""
    setup_script_logging(logger, "demo")


def expand_inputs(patterns: List[str]) -> List[str]:
    """
    Expand image files, directories and glob patterns into a list of files: sorted within
    each pattern, in the order of the patterns, each file once.

    Raises:
        FileNotFoundError: naming the first pattern that matches nothing.
    """
    paths: List[str] = []
    seen = set()
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = list_images(pattern)
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = [p for p in glob.glob(pattern) if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(f"--input {pattern!r}: no such file, or no image matches it")
        for path in sorted(found):
            if os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                paths.append(path)
    return paths


def drawing_names(paths: List[str]) -> List[str]:
    """
    The file name of each input's drawing in an output folder: the input's name (with
    ``.png`` added unless it ends with an image extension); a name already taken, ignoring
    case, gets ``-2``, ``-3``, ... before its extension, in input order.
    """
    names = [
        os.path.basename(p)
        if p.lower().endswith(IMAGE_EXTENSIONS)
        else os.path.splitext(os.path.basename(p))[0] + ".png"
        for p in paths
    ]
    wanted = {name.casefold() for name in names}
    taken = set()
    for i, name in enumerate(names):
        if name.casefold() in taken:
            stem, ext = os.path.splitext(name)
            k = 2
            while f"{stem}-{k}{ext}".casefold() in taken | wanted:
                k += 1
            names[i] = f"{stem}-{k}{ext}"
        taken.add(names[i].casefold())
    return names


def output_paths(output: str, patterns: List[str], paths: List[str]) -> List[str]:
    """
    Where each drawing goes: ``output`` itself for one image file given by name and an
    ``output`` with an image extension (not a folder); else files of :func:`drawing_names`
    in the folder ``output``, created if needed.
    """
    to_file = (
        len(paths) == 1
        and len(patterns) == 1
        and os.path.isfile(os.path.expanduser(patterns[0]))
        and output.lower().endswith(IMAGE_EXTENSIONS)
        and not os.path.isdir(output)
        and not output.endswith(os.sep)
    )
    if to_file:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return [output]
    if os.path.exists(output) and not os.path.isdir(output):
        raise DemoError(f"--output {output!r} exists and is not a folder")
    os.makedirs(output, exist_ok=True)
    return [os.path.join(output, name) for name in drawing_names(paths)]


def save_drawing(drawing: VisImage, path: str) -> None:
    """Write a drawing (of its image's size) atomically, in the format of the extension."""
    with atomic_output_path(path) as tmp:
        Image.fromarray(drawing.get_image()).save(tmp)


def _readable_images(paths: List[str], skipped: List[str]) -> Iterator[Tuple[int, np.ndarray]]:
    """``(index, RGB image)`` for each readable input; the others are logged and listed."""
    for index, path in enumerate(paths):
        try:
            yield index, read_image(path, "RGB")
        except UnreadableImageError as e:
            logger.warning("skipped %s: %s", path, e.reason)
            skipped.append(path)


def _describe(prediction: Prediction) -> str:
    if prediction.instances is not None:
        return f"detected {len(prediction.instances)} instances"
    return "finished"


def run_on_images(
    demo: PredictionVisualizer, paths: List[str], targets: Optional[List[str]]
) -> int:
    """
    Draw each image into its target (or show it when ``targets`` is None).

    Returns:
        the number of inputs not drawn: unreadable images and drawings that could not be saved.
    """
    failed: List[str] = []
    progress = tqdm.tqdm(total=len(paths), disable=targets is None or len(paths) < 2 or None)
    start = time.time()
    with progress, logging_redirect_tqdm(loggers=[logger]):
        for index, prediction, drawing in demo.run_on_images(_readable_images(paths, failed)):
            seconds = time.time() - start
            logger.info("%s: %s in %.2fs", paths[index], _describe(prediction), seconds)
            progress.update(1 + index - progress.n)
            if targets is None:
                if not _show(drawing.get_image()[:, :, ::-1], 0):
                    break
            else:
                try:
                    save_drawing(drawing, targets[index])
                except (OSError, ValueError) as e:  # PIL: unknown extension, full disk, ...
                    logger.warning("could not save %s: %s", targets[index], e)
                    failed.append(paths[index])
            start = time.time()
    return len(failed)


def _open_video_writer(path: str, fps: float, width: int, height: int):
    """
    Open a writer for ``path`` (extension set by the codec: x264 in .mkv where this OpenCV
    build can write it, else mp4v in .mp4). It writes to a temporary file beside the target,
    renamed by the caller once every frame is written.

    Returns:
        (writer, temporary path, final path)
    """
    for codec, ext in (("x264", ".mkv"), ("mp4v", ".mp4")):
        final = os.path.splitext(path)[0] + ext
        tmp = os.path.splitext(path)[0] + ".partial" + ext
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if writer.isOpened():
            return writer, tmp, final
        writer.release()
        if os.path.exists(tmp):
            os.remove(tmp)
    raise DemoError(f"This OpenCV build cannot write a video to {path}")


def _show(frame: np.ndarray, wait_ms: int) -> bool:
    """Show a BGR frame in the demo window; return False when the user pressed Esc."""
    cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    cv2.imshow(WINDOW_NAME, frame)
    return cv2.waitKey(wait_ms) != 27


def run_on_video(demo: PredictionVisualizer, path: str, output: Optional[str]) -> None:
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise DemoError(f"Cannot read video {path}")
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = tmp = final = None
    if output:
        target = os.path.join(output, os.path.basename(path)) if os.path.isdir(output) else output
        writer, tmp, final = _open_video_writer(target, fps, width, height)
    try:
        for frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames, desc="frames"):
            if writer is not None:
                writer.write(frame)
            elif not _show(frame, 1):
                break
        if writer is not None:
            writer.release()
            os.replace(tmp, final)
            logger.info("Wrote %s", final)
    finally:
        video.release()
        if writer is not None:
            writer.release()
            if os.path.exists(tmp):
                os.remove(tmp)
        else:
            cv2.destroyAllWindows()


def run_on_webcam(demo: PredictionVisualizer) -> None:
    camera = cv2.VideoCapture(0)
    if not camera.isOpened():
        raise DemoError("Cannot open the webcam (device 0)")
    try:
        for frame in tqdm.tqdm(demo.run_on_video(camera), desc="frames"):
            if not _show(frame, 1):
                break
    finally:
        camera.release()
        cv2.destroyAllWindows()


def _run(demo: PredictionVisualizer, args: argparse.Namespace, paths: List[str]) -> int:
    """Run the demo on its source; returns the exit status."""
    if args.video_input:
        run_on_video(demo, args.video_input, args.output)
        return 0
    if args.webcam:
        run_on_webcam(demo)
        return 0
    targets = output_paths(args.output, args.input, paths) if args.output else None
    failed = run_on_images(demo, paths, targets)
    if failed:
        logger.error("%d of %d images were not drawn (see the lines above)", failed, len(paths))
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run the demo; returns the exit status (0: every input was drawn)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    sources = [bool(args.input), bool(args.video_input), args.webcam]
    if sum(sources) != 1:
        parser.error("give exactly one of --input, --video-input and --webcam")
    if args.webcam and args.output:
        parser.error("--output is not supported with --webcam")
    setup_demo_logging()
    logger.info("Arguments: %s", args)
    try:
        paths = expand_inputs(args.input) if args.input else []
        for target in args.register:
            import_registration(target)
    except (FileNotFoundError, ImportError) as e:
        parser.error(str(e))
    try:
        cfg = setup_cfg(args)
    except (KeyError, ValueError, AssertionError) as e:  # yacs: unknown key, wrong type, ...
        parser.error(f"--config-file/--opts: {e}")
    threshold = args.confidence_threshold if args.confidence_threshold is not None else 0.0
    parallel = True if args.parallel == 0 else (args.parallel or False)
    try:
        demo = PredictionVisualizer(cfg, parallel=parallel, instance_threshold=threshold)
    except ValueError as e:  # CheckpointError, or class names that do not fit the model
        logger.error("%s", e)
        return 1
    except UntrustedCheckpointError as e:  # a refused MODEL.WEIGHTS: one line
        logger.error("%s", e)
        return 1
    try:
        with demo:
            return _run(demo, args, paths)
    except (DemoError, CheckpointError) as e:
        logger.error("%s", e)
        return 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)

#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Draw the predictions of a MaskFormer (or per-pixel baseline) model on images, a video or a
webcam stream.

Usage:
    python demo/demo.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --input images/ photo.jpg "more/*.png" --output vis/ \
        --opts MODEL.WEIGHTS model_final.pkl MODEL.DEVICE cpu

``--input`` takes image files, directories (every image in them) and glob patterns.
``--confidence-threshold`` filters what is drawn: for instance predictions, instances scoring
below it; for panoptic models, it replaces MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD, so
queries whose class score is below it make no segment. Semantic segmentation has no scores to
filter and ignores it. Without ``--output`` the drawings are shown in a window (Esc quits).
"""

import argparse
import glob
import logging
import os
import sys
import time
from typing import List, Optional

import cv2
import numpy as np
import tqdm
from detectron2.config import CfgNode
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from mask_former import get_mask_former_cfg
from mask_former.utils import atomic_output_path, fall_back_to_cpu

try:  # run as "python demo/demo.py": this folder is on sys.path
    from predictor import VisualizationDemo
except ImportError:  # imported as demo.demo
    from demo.predictor import VisualizationDemo

WINDOW_NAME = "MaskFormer"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

logger = logging.getLogger("mask_former.demo")


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config: file, then --opts, then --confidence-threshold."""
    cfg = get_mask_former_cfg()
    cfg.merge_from_file(args.config_file, allow_unsafe=False)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None and cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON:
        cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


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
        help="image files, directories of images, or glob patterns such as 'dir/*.jpg'",
    )
    parser.add_argument(
        "--output",
        help="a folder to save drawings to, or for a single input a file name with an image "
        "extension; without it, drawings are shown in a window",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="instances scoring below this are not drawn; for panoptic models, replaces "
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD (default: the config's value)",
    )
    parser.add_argument(
        "--opts",
        help="config options as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu",
        default=[],
        nargs=argparse.REMAINDER,
    )
    return parser


def expand_inputs(patterns: List[str]) -> List[str]:
    """
    Expand image files, directories and glob patterns into a sorted list of files.

    Raises:
        FileNotFoundError: naming the first pattern that matches nothing.
    """
    paths: List[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = [
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = [p for p in glob.glob(pattern) if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(f"--input {pattern!r}: no such file, or no image matches it")
        paths.extend(sorted(found))
    return paths


def load_image(path: str) -> np.ndarray:
    """Read an image as a BGR uint8 array; raise ValueError naming the file if unreadable."""
    try:
        return read_image(path, format="BGR")
    except Exception as e:  # PIL raises several types for corrupt or non-image files
        raise ValueError(f"Cannot read image {path}: {e}") from e


def output_file(output: str, input_path: str, many: bool) -> str:
    """
    Where the drawing of ``input_path`` goes: ``output`` itself for a single input and an
    output with a file extension, else a file of the input's name inside the folder ``output``.
    """
    if many or os.path.isdir(output) or not os.path.splitext(output)[1]:
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.basename(input_path))
    return output


def run_on_images(demo: VisualizationDemo, paths: List[str], output: Optional[str]) -> None:
    many = len(paths) > 1
    for path in tqdm.tqdm(paths, disable=not output or not many, desc="images"):
        image = load_image(path)
        start = time.time()
        predictions, visualized = demo.run_on_image(image)
        what = (
            f"detected {len(predictions['instances'])} instances"
            if "instances" in predictions
            else "finished"
        )
        logger.info("%s: %s in %.2fs", path, what, time.time() - start)
        if output:
            with atomic_output_path(output_file(output, path, many)) as tmp:
                visualized.save(tmp)
        elif not _show(visualized.get_image()[:, :, ::-1], 0):
            break


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
    raise RuntimeError(f"This OpenCV build cannot write a video to {path}")


def _show(frame: np.ndarray, wait_ms: int) -> bool:
    """Show a BGR frame in the demo window; return False when the user pressed Esc."""
    cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    cv2.imshow(WINDOW_NAME, frame)
    return cv2.waitKey(wait_ms) != 27


def run_on_video(demo: VisualizationDemo, path: str, output: Optional[str]) -> None:
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"Cannot read video {path}")
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


def run_on_webcam(demo: VisualizationDemo) -> None:
    camera = cv2.VideoCapture(0)
    if not camera.isOpened():
        raise RuntimeError("Cannot open the webcam (device 0)")
    try:
        for frame in tqdm.tqdm(demo.run_on_video(camera), desc="frames"):
            if not _show(frame, 1):
                break
    finally:
        camera.release()
        cv2.destroyAllWindows()


def main(argv: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    sources = [bool(args.input), bool(args.video_input), args.webcam]
    if sum(sources) != 1:
        parser.error("give exactly one of --input, --video-input and --webcam")
    if args.webcam and args.output:
        parser.error("--output is not supported with --webcam")
    setup_logger(name="fvcore")
    setup_logger(name="mask_former")
    logger.info("Arguments: %s", args)

    paths = expand_inputs(args.input) if args.input else []
    cfg = setup_cfg(args)
    threshold = args.confidence_threshold if args.confidence_threshold is not None else 0.0
    demo = VisualizationDemo(cfg, instance_threshold=threshold)
    if paths:
        run_on_images(demo, paths, args.output)
    elif args.video_input:
        run_on_video(demo, args.video_input, args.output)
    else:
        run_on_webcam(demo)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

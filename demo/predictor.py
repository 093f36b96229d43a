# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Run a model on images or video frames and draw its predictions with Detectron2's Visualizer.

What is drawn depends on the model's outputs: "panoptic_seg" when there is one (segments
coloured by category, things labelled); else "sem_seg" (the argmax class of each pixel) and
then "instances" (masks and boxes with scores) on top of it, each when present. Instances
scoring below ``instance_threshold`` are not drawn.

With ``parallel``, the model runs in worker processes (:class:`AsyncPredictor`) while this
process reads and draws; the drawings come out in input order either way.
"""

import collections
import contextlib
import logging
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

try:  # demo/ is on sys.path (python demo/demo.py)
    from async_predictor import AsyncPredictor, default_num_workers
except ImportError:  # imported as demo.predictor
    from demo.async_predictor import AsyncPredictor, default_num_workers

__all__ = ["VisualizationDemo", "demo_metadata"]

logger = logging.getLogger(__name__)


def demo_metadata(cfg: CfgNode) -> Metadata:
    """
    The metadata of the config's first test set, which names and colours the classes; when
    that set is not registered (or has no class names), generic names "class 0", "class 1", ...
    for MODEL.SEM_SEG_HEAD.NUM_CLASSES classes, so any model can still be drawn.
    """
    if len(cfg.DATASETS.TEST):
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if metadata.get("stuff_classes") is not None:
            return metadata
        logger.warning(
            "Dataset %s has no class names in its metadata: using generic names.",
            cfg.DATASETS.TEST[0],
        )
    names = [f"class {i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    return Metadata(name="__demo_generic").set(stuff_classes=names, thing_classes=names)


def _filter_instances(predictions: Dict, threshold: float) -> Dict:
    """Drop instances whose score is below ``threshold`` (in place, returns ``predictions``)."""
    if "instances" in predictions and threshold > 0:
        instances = predictions["instances"]
        predictions["instances"] = instances[instances.scores >= threshold]
    return predictions


def _check_drawable(predictions: Dict) -> None:
    if not {"panoptic_seg", "sem_seg", "instances"} & set(predictions):
        raise ValueError(f"The model returned nothing to draw: {sorted(predictions)}")


@contextlib.contextmanager
def _reproducible_colours(seed: int) -> Iterator[None]:
    """
    The Visualizer picks (and jitters) colours with NumPy's global random generator: seed it
    for one drawing, so an image is drawn alike in every run, in worker processes or not, and
    restore the caller's state afterwards.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class VisualizationDemo:
    """
    A model in eval mode (Detectron2's DefaultPredictor: test-time resize, BGR/RGB per
    INPUT.FORMAT), in this process or in worker processes, plus the class names and colours
    of :func:`demo_metadata`. Call :meth:`close` (or use it in a ``with`` block) to stop the
    workers.
    """

    def __init__(
        self,
        cfg: CfgNode,
        instance_mode: ColorMode = ColorMode.IMAGE,
        parallel: Union[bool, int] = False,
        instance_threshold: float = 0.0,
    ):
        """
        Args:
            cfg (CfgNode): a frozen config; MODEL.WEIGHTS is loaded.
            instance_mode (ColorMode): how the Visualizer colours instances.
            parallel (bool or int): False or 0: run the model in this process; True: in worker
                processes, one per GPU with CUDA, else 2; N: in N worker processes.
            instance_threshold (float): instances scoring below this are not drawn.
        """
        self.metadata: Metadata = demo_metadata(cfg)
        self.cpu_device = torch.device("cpu")
        self.instance_mode = instance_mode
        self.instance_threshold = instance_threshold
        if parallel is True:
            parallel = default_num_workers(cfg)
        self.predictor: Union[DefaultPredictor, AsyncPredictor] = (
            AsyncPredictor(cfg, int(parallel)) if parallel else DefaultPredictor(cfg)
        )

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if isinstance(self.predictor, AsyncPredictor):
            self.predictor.shutdown()

    def __enter__(self) -> "VisualizationDemo":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, VisImage]:
        """
        Args:
            image (np.ndarray): (H, W, 3) uint8 image in BGR order (OpenCV's).

        Returns:
            (predictions, visualization): the model's output dict for the image, and the
            drawing on top of it (of the image's size).
        """
        predictions = _filter_instances(self.predictor(image), self.instance_threshold)
        return predictions, self._draw_image(image, predictions)

    def run_on_images(
        self, images: Iterable[Tuple[Any, np.ndarray]]
    ) -> Iterator[Tuple[Any, Dict, VisImage]]:
        """
        Draw a stream of images; with workers, several are predicted at once.

        Args:
            images: ``(key, image)`` pairs, the image as in :meth:`run_on_image`. It is
                consumed lazily (a few images ahead of the drawings with workers).

        Yields:
            ``(key, predictions, visualization)`` for each image, in input order.
        """
        for key, image, predictions in self._predict(images):
            predictions = _filter_instances(predictions, self.instance_threshold)
            yield key, predictions, self._draw_image(image, predictions)

    def _predict(
        self, images: Iterable[Tuple[Any, np.ndarray]]
    ) -> Iterator[Tuple[Any, np.ndarray, Dict]]:
        """``(key, image, predictions)`` in input order, keeping the worker pool's buffer full."""
        if not isinstance(self.predictor, AsyncPredictor):
            for key, image in images:
                yield key, image, self.predictor(image)
            return
        pending: collections.deque = collections.deque()
        try:
            for key, image in images:
                self.predictor.put(image)
                pending.append((key, image))
                if len(pending) >= self.predictor.default_buffer_size:
                    yield (*pending.popleft(), self.predictor.get())
            while pending:
                yield (*pending.popleft(), self.predictor.get())
        except GeneratorExit:  # the caller stopped early (or failed)
            self.predictor.discard_pending()
            raise

    def _draw_image(self, image: np.ndarray, predictions: Dict) -> VisImage:
        _check_drawable(predictions)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=self.instance_mode)
        with _reproducible_colours(0):
            if "panoptic_seg" in predictions:
                panoptic_seg, segments_info = predictions["panoptic_seg"]
                return visualizer.draw_panoptic_seg(panoptic_seg.to(self.cpu_device), segments_info)
            # Both on one canvas: each draw_* call paints over the Visualizer's output.
            if "sem_seg" in predictions:
                labels = predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
                visualizer.draw_sem_seg(labels)
            if "instances" in predictions:
                instances = predictions["instances"].to(self.cpu_device)
                visualizer.draw_instance_predictions(instances)
        return visualizer.output

    def _draw_frame(
        self, visualizer: VideoVisualizer, frame: np.ndarray, predictions: Dict, index: int
    ) -> np.ndarray:
        """The drawing of a BGR frame, BGR; like :meth:`_draw_image`, with tracked colours."""
        _check_drawable(predictions)
        drawing = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        with _reproducible_colours(index):
            if "panoptic_seg" in predictions:
                panoptic_seg, segments_info = predictions["panoptic_seg"]
                drawing = visualizer.draw_panoptic_seg_predictions(
                    drawing, panoptic_seg.to(self.cpu_device), segments_info
                ).get_image()
            else:
                if "sem_seg" in predictions:
                    labels = predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
                    drawing = visualizer.draw_sem_seg(drawing, labels).get_image()
                if "instances" in predictions:
                    instances = predictions["instances"].to(self.cpu_device)
                    drawing = visualizer.draw_instance_predictions(drawing, instances).get_image()
        return cv2.cvtColor(drawing, cv2.COLOR_RGB2BGR)

    def run_on_video(
        self, video: cv2.VideoCapture, max_frames: Optional[int] = None
    ) -> Iterator[np.ndarray]:
        """
        Yield the drawing of each frame of ``video`` (BGR, like the frames); colours of
        tracked instances stay stable from frame to frame. With workers, several frames are
        predicted at once.
        """
        visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        for index, frame, predictions in self._predict(_frames(video, max_frames)):
            predictions = _filter_instances(predictions, self.instance_threshold)
            yield self._draw_frame(visualizer, frame, predictions, index)


def _frames(video: cv2.VideoCapture, max_frames: Optional[int]) -> Iterator[Tuple[int, Any]]:
    """``(index, frame)`` for each frame of ``video`` (at most ``max_frames``)."""
    index = 0
    while video.isOpened() and (max_frames is None or index < max_frames):
        success, frame = video.read()
        if not success:
            return
        yield index, frame
        index += 1

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Predict images or video frames and draw the predictions with detectron2's ``Visualizer``
(images) and ``VideoVisualizer`` (frames, with instance colours tracked from frame to frame).

What is drawn depends on the model's outputs: "panoptic_seg" when there is one (segments
coloured by category, things labelled); else "sem_seg" (the argmax class of each pixel) and
then "instances" (masks and boxes with scores) on top of it, each when present. Instances
scoring below ``instance_threshold`` are not drawn. Colours are reproducible: the drawing of
an image is the same in every run, in worker processes or not.

With ``parallel``, the model runs in worker processes (:class:`~.workers.ParallelPredictor`)
while this process reads and draws; the drawings come out in input order either way.

Shape shorthand in this module: H, W image height and width.
"""

import collections
import contextlib
from typing import Any, Iterable, Iterator, Optional, Tuple, Union

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import Metadata
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from .predictor import Predictor
from .results import Prediction
from .workers import ParallelPredictor, default_num_workers

__all__ = ["PredictionVisualizer", "draw_frame", "draw_prediction"]


def _check_drawable(prediction: Prediction) -> None:
    if not {"panoptic_seg", "sem_seg", "instances"} & set(prediction.outputs):
        raise ValueError(f"The model returned nothing to draw: {sorted(prediction.outputs)}")


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


def draw_prediction(
    rgb: np.ndarray,
    prediction: Prediction,
    metadata: Metadata,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> VisImage:
    """
    The drawing of ``prediction`` over its (H, W, 3) uint8 RGB image, of the image's size:
    the panoptic segments, else the semantic classes and then the instances on top, with the
    colours of the global NumPy generator seeded with 0 (and restored after).
    """
    _check_drawable(prediction)
    visualizer = Visualizer(rgb, metadata, instance_mode=instance_mode)
    outputs = prediction.outputs
    with _reproducible_colours(0):
        if "panoptic_seg" in outputs:
            ids, segments_info = outputs["panoptic_seg"]
            return visualizer.draw_panoptic_seg(ids.to("cpu"), segments_info)
        # Both on one canvas: each draw_* call paints over the Visualizer's output.
        if "sem_seg" in outputs:
            visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
        if "instances" in outputs:
            visualizer.draw_instance_predictions(outputs["instances"].to("cpu"))
    return visualizer.output


def draw_frame(
    visualizer: VideoVisualizer, bgr: np.ndarray, prediction: Prediction, index: int
) -> np.ndarray:
    """
    The drawing of the ``index``-th video frame (H, W, 3) uint8 BGR, as BGR: like
    :func:`draw_prediction`, with the tracked colours of ``visualizer`` and the colour
    generator seeded with ``index``.
    """
    _check_drawable(prediction)
    outputs = prediction.outputs
    drawing = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with _reproducible_colours(index):
        if "panoptic_seg" in outputs:
            ids, segments_info = outputs["panoptic_seg"]
            drawing = visualizer.draw_panoptic_seg_predictions(
                drawing, ids.to("cpu"), segments_info
            ).get_image()
        else:
            if "sem_seg" in outputs:
                labels = outputs["sem_seg"].argmax(dim=0).to("cpu")
                drawing = visualizer.draw_sem_seg(drawing, labels).get_image()
            if "instances" in outputs:
                instances = outputs["instances"].to("cpu")
                drawing = visualizer.draw_instance_predictions(drawing, instances).get_image()
    return cv2.cvtColor(drawing, cv2.COLOR_RGB2BGR)


Predicting = Union[Predictor, ParallelPredictor]


class PredictionVisualizer:
    """
    A :class:`~.predictor.Predictor` of a config, in this process or in worker processes,
    plus the class names and colours of its predictor (:func:`~.results.class_metadata`),
    drawing what it predicts. Call :meth:`close` (or use it in a ``with`` block) to stop the
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
            cfg: a config; MODEL.WEIGHTS is loaded.
            instance_mode: how the Visualizer colours instances.
            parallel: False or 0: run the model in this process; True: in worker processes,
                one per GPU with CUDA, else 2; N: in N worker processes.
            instance_threshold: instances scoring below this are not drawn.
        """
        self.instance_mode = instance_mode
        self.instance_threshold = instance_threshold
        if parallel is True:
            parallel = default_num_workers(cfg)
        # One image per model call: a result never depends on the images beside it.
        if parallel:
            self.predictor: Predicting = ParallelPredictor(cfg, int(parallel))
        else:  # the cfg's precision, as in the workers
            self.predictor = Predictor(cfg, batch_size=1, precision=None)
        # The predictor's class names: the test dataset's, the checkpoint's, or generic ones.
        self.metadata: Metadata = self.predictor.metadata

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if isinstance(self.predictor, ParallelPredictor):
            self.predictor.shutdown()

    def __enter__(self) -> "PredictionVisualizer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def run_on_image(self, rgb: np.ndarray) -> Tuple[Prediction, VisImage]:
        """
        Args:
            rgb: (H, W, 3) uint8 image, RGB.

        Returns:
            (prediction, visualization): the prediction (without the instances below the
            threshold), and the drawing on top of the image (of the image's size).
        """
        ((_, prediction, drawing),) = self.run_on_images([(None, rgb)])
        return prediction, drawing

    def run_on_images(
        self, images: Iterable[Tuple[Any, np.ndarray]]
    ) -> Iterator[Tuple[Any, Prediction, VisImage]]:
        """
        Draw a stream of images; with workers, several are predicted at once.

        Args:
            images: ``(key, rgb)`` pairs, the image as in :meth:`run_on_image`. It is
                consumed lazily (a few images ahead of the drawings with workers).

        Yields:
            ``(key, prediction, visualization)`` for each image, in input order.
        """
        for key, rgb, prediction in self._predict(images, "RGB"):
            prediction = prediction.with_instances_above(self.instance_threshold)
            drawing = draw_prediction(rgb, prediction, self.metadata, self.instance_mode)
            yield key, prediction, drawing

    def run_on_video(
        self, video: cv2.VideoCapture, max_frames: Optional[int] = None
    ) -> Iterator[np.ndarray]:
        """
        Yield the drawing of each frame of ``video`` (BGR, like the frames); colours of
        tracked instances stay stable from frame to frame. With workers, several frames are
        predicted at once.
        """
        visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        for index, frame, prediction in self._predict(_frames(video, max_frames), "BGR"):
            prediction = prediction.with_instances_above(self.instance_threshold)
            yield draw_frame(visualizer, frame, prediction, index)

    def _predict(
        self, images: Iterable[Tuple[Any, np.ndarray]], channel_order: str
    ) -> Iterator[Tuple[Any, np.ndarray, Prediction]]:
        """``(key, image, prediction)`` in input order, keeping the worker pool's buffer full."""
        if not isinstance(self.predictor, ParallelPredictor):
            for key, image in images:
                yield key, image, self.predictor(image, channel_order)
            return
        pool = self.predictor
        pending: collections.deque = collections.deque()
        try:
            for key, image in images:
                pool.put(image, channel_order)
                pending.append((key, image))
                if len(pending) >= pool.default_buffer_size:
                    yield (*pending.popleft(), pool.get())
            while pending:
                yield (*pending.popleft(), pool.get())
        except GeneratorExit:  # the caller stopped early (or failed)
            pool.discard_pending()
            raise


def _frames(video: cv2.VideoCapture, max_frames: Optional[int]) -> Iterator[Tuple[int, Any]]:
    """``(index, frame)`` for each frame of ``video`` (at most ``max_frames``)."""
    index = 0
    while video.isOpened() and (max_frames is None or index < max_frames):
        success, frame = video.read()
        if not success:
            return
        yield index, frame
        index += 1

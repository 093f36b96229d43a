# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Run a model on images or video frames and draw its predictions with Detectron2's Visualizer.

What is drawn depends on the model's outputs, in this order of preference: "panoptic_seg"
(segments coloured by category, things labelled), "sem_seg" (the argmax class of each pixel),
"instances" (masks and boxes with scores). Instances scoring below ``instance_threshold`` are
not drawn.
"""

import logging
from typing import Dict, Iterator, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

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


class VisualizationDemo:
    """
    A model in eval mode (Detectron2's DefaultPredictor: test-time resize, BGR/RGB per
    INPUT.FORMAT) plus the class names and colours of :func:`demo_metadata`.
    """

    def __init__(
        self,
        cfg: CfgNode,
        instance_mode: ColorMode = ColorMode.IMAGE,
        instance_threshold: float = 0.0,
    ):
        """
        Args:
            cfg (CfgNode): a frozen config; MODEL.WEIGHTS is loaded.
            instance_mode (ColorMode): how the Visualizer colours instances.
            instance_threshold (float): instances scoring below this are not drawn.
        """
        self.metadata: Metadata = demo_metadata(cfg)
        self.cpu_device = torch.device("cpu")
        self.instance_mode = instance_mode
        self.instance_threshold = instance_threshold
        self.predictor = DefaultPredictor(cfg)

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, VisImage]:
        """
        Args:
            image (np.ndarray): (H, W, 3) uint8 image in BGR order (OpenCV's).

        Returns:
            (predictions, visualization): the model's output dict for the image, and the
            drawing on top of it.
        """
        predictions = _filter_instances(self.predictor(image), self.instance_threshold)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=self.instance_mode)
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            vis = visualizer.draw_panoptic_seg(panoptic_seg.to(self.cpu_device), segments_info)
        elif "sem_seg" in predictions:
            labels = predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
            vis = visualizer.draw_sem_seg(labels)
        elif "instances" in predictions:
            vis = visualizer.draw_instance_predictions(predictions["instances"].to(self.cpu_device))
        else:
            raise ValueError(f"The model returned nothing to draw: {sorted(predictions)}")
        return predictions, vis

    def _draw_frame(self, visualizer: VideoVisualizer, frame: np.ndarray) -> np.ndarray:
        predictions = _filter_instances(self.predictor(frame), self.instance_threshold)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            vis = visualizer.draw_panoptic_seg_predictions(
                rgb, panoptic_seg.to(self.cpu_device), segments_info
            )
        elif "sem_seg" in predictions:
            labels = predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
            vis = visualizer.draw_sem_seg(rgb, labels)
        else:
            instances = predictions["instances"].to(self.cpu_device)
            vis = visualizer.draw_instance_predictions(rgb, instances)
        return cv2.cvtColor(vis.get_image(), cv2.COLOR_RGB2BGR)

    def run_on_video(
        self, video: cv2.VideoCapture, max_frames: Optional[int] = None
    ) -> Iterator[np.ndarray]:
        """
        Yield the drawing of each frame of ``video`` (BGR, like the frames); colours of
        tracked instances stay stable from frame to frame.
        """
        visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        count = 0
        while video.isOpened() and (max_frames is None or count < max_frames):
            success, frame = video.read()
            if not success:
                break
            count += 1
            yield self._draw_frame(visualizer, frame)

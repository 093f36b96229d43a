# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The in-process inference of a model: :class:`Predictor` runs a model of a config on image
files, NumPy arrays and PIL images, several per model call, and returns one
:class:`Prediction` per image with class names attached. The demo, its worker processes and
the Python API all predict through it.

Each image is prepared as detectron2's ``DefaultPredictor`` prepares it: read upright per its
EXIF orientation (files through :mod:`mask_former.data.io`), in the model's INPUT.FORMAT,
resized by ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)`` (not resized when
INPUT.MIN_SIZE_TEST is 0, as in detectron2's test mapper: for very large photos, with
MODEL.MASK_FORMER.TEST.MODE "slide"), with the outputs at the image's own size. A result does
not depend on the batch it comes in: MaskFormer runs the images of a call in groups of the
same padded size (``MaskFormer.run_inference``), and other models (the per-pixel baselines) get
one call per image size.

Shape shorthand in this module: H, W image height and width; K classes; N instances.
"""

import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from ..checkpoint.weights import LoadedWeights, load_model_weights
from ..config import load_config
from ..data import io
from ..modeling import MaskFormer
from .results import Prediction, class_metadata, segments_of

__all__ = ["ERROR_CHOICES", "ImageInput", "Predictor", "image_to_rgb"]

logger = logging.getLogger(__name__)

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Image.Image]
ConfigInput = Union[str, "os.PathLike[str]", CfgNode]
# What predict() and predict_dir() do with an unreadable image file (see their docstrings).
ERROR_CHOICES = ("raise", "skip")


def _array_to_rgb(array: np.ndarray, channel_order: str) -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array -> (H, W, 3) uint8 RGB."""
    if array.dtype != np.uint8:
        raise TypeError(f"Image arrays must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"Image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    array = array[:, :, :3]  # an alpha channel is dropped, as for files
    return array[:, :, ::-1] if channel_order == "BGR" else array


def image_to_rgb(image: ImageInput, channel_order: str = "RGB") -> np.ndarray:
    """
    Any input of :class:`Predictor` as an (H, W, 3) uint8 RGB array.

    Args:
        image: a file path (read by :func:`mask_former.data.io.read_image`: upright, 16-bit
            grey scaled to 8 bits); a PIL image (turned upright per its EXIF orientation and
            converted like a file); or a uint8 NumPy array (H, W, 3) in ``channel_order``,
            (H, W, 4) (alpha dropped) or (H, W) grey.
        channel_order: "RGB" (PIL's and most libraries' order: the default) or "BGR"
            (OpenCV's ``cv2.imread``); only used for arrays.

    Raises:
        mask_former.data.io.UnreadableImageError: a file that is not a readable image.
        TypeError, ValueError: an input of another type, dtype or shape.
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return io.read_image(image, "RGB")
    if isinstance(image, Image.Image):
        return io.pil_to_array(io.upright(image), "RGB")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channel_order)
    raise TypeError(f"Expected a path, a NumPy array or a PIL image, got {type(image).__name__}")


def _check_errors(errors: str) -> None:
    if errors not in ERROR_CHOICES:
        raise ValueError(f"errors must be one of {ERROR_CHOICES}, got {errors!r}")


# An input read for the model: (source, RGB array), or (source, None) with the error Prediction.
_Loaded = Tuple[str, Optional[np.ndarray], Optional[Prediction]]


def _load(source: str, image: ImageInput, channel_order: str, errors: str) -> _Loaded:
    """Read one input; an unreadable file raises, or with ``errors="skip"`` is reported."""
    try:
        return source, image_to_rgb(image, channel_order), None
    except io.UnreadableImageError as e:
        if errors == "raise":
            raise
        logger.warning("skipped %s: %s", source, e.reason)
        return source, None, Prediction(source=source, error=str(e))


class Predictor:
    """
    A model of a config and its weights, in eval mode, for images in memory or on disk.

    Example::

        predictor = Predictor("configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml",
                              "output/model_final.pth", device="cpu")
        result = predictor("image.jpg")           # or a PIL image, or an RGB uint8 array
        results = predictor.predict([a, b, c])    # one model call per batch_size images
        for result in predictor.predict_dir("images/"):
            ...
    """

    def __init__(
        self,
        config: ConfigInput,
        weights: Optional[str] = None,
        *,
        opts: Sequence[str] = (),
        device: Optional[str] = None,
        batch_size: int = 4,
        labels_only: bool = False,
        precision: Optional[str] = "auto",
    ):
        """
        Args:
            config: a config file or a CfgNode, built with :func:`mask_former.load_config`
                (then ``opts``, ``weights``, ``device``; CUDA falls back to the CPU).
            weights: a checkpoint (.pth, .pkl, detectron2:// or URL), loaded with
                :func:`mask_former.checkpoint.load_model_weights`: it must give every parameter
                of the model a value of its shape, unless MODEL.ALLOW_PARTIAL_WEIGHTS; None:
                the config's MODEL.WEIGHTS; "": random weights (with a warning).
            opts: config overrides as KEY VALUE pairs, e.g. ("MODEL.MASK_FORMER.TEST.
                OBJECT_MASK_THRESHOLD", "0.5").
            device: "cpu", "cuda", "cuda:1", ...; None: the config's MODEL.DEVICE.
            batch_size: the most images per model call.
            labels_only: predict the semantic class ids only (``Prediction.semantic``; the
                outputs hold no "sem_seg" scores). With MODEL.MASK_FORMER.TEST.MODE "slide"
                they are computed band by band of windows (``MaskFormer.semantic_labels``), so
                no (K, H, W) score map is held: memory is bounded by a band of windows.
            precision: MODEL.MASK_FORMER.TEST.PRECISION of the network, applied before
                ``opts``: "auto" (the default: bfloat16 autocast where the CPU computes it
                natively, else float32; see :mod:`mask_former.modeling.precision`), "float32",
                "bfloat16", "float16"; None keeps the config's value (evaluation's default,
                float32). Results are exactly those of the demo in every precision; in float32
                they also do not depend on the batch they come in.

        Raises:
            mask_former.checkpoint.CheckpointError: the weights file is missing, unreadable
                or not a checkpoint; :class:`~mask_former.checkpoint.WeightsMismatchError`
                (a subclass) when its weights do not fit the model. The message names the file.
            ValueError: the class names (see :func:`~.results.class_metadata`: the registered
                test dataset's, else the checkpoint's, else generic ones with a warning) are
                not MODEL.SEM_SEG_HEAD.NUM_CLASSES many.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        chosen = [] if precision is None else ["MODEL.MASK_FORMER.TEST.PRECISION", precision]
        self.cfg = load_config(config, [*chosen, *opts], weights=weights, device=device)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format!r}")
        self.model = build_model(self.cfg)
        self.model.eval()
        self.weights: Optional[LoadedWeights] = load_model_weights(
            self.model, self.cfg.MODEL.WEIGHTS, allow_partial=self.cfg.MODEL.ALLOW_PARTIAL_WEIGHTS
        )
        min_size, max_size = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        # MIN_SIZE_TEST 0: no test resize (detectron2's ResizeShortestEdge does nothing then).
        self.resize = None if min_size == 0 else T.ResizeShortestEdge([min_size] * 2, max_size)
        self.labels_only = labels_only
        saved = self.weights.metadata if self.weights is not None else None
        self.metadata = class_metadata(self.cfg, saved, self.cfg.MODEL.WEIGHTS)
        self.batch_size = batch_size

    @property
    def class_names(self) -> List[str]:
        """The model's class names (the metadata's ``stuff_classes``)."""
        return list(self.metadata.stuff_classes)

    def __call__(self, image: ImageInput, channel_order: str = "RGB") -> Prediction:
        """The prediction of one image (see :func:`image_to_rgb` for the inputs)."""
        return self.predict([image], channel_order=channel_order)[0]

    def predict(
        self,
        images: Iterable[ImageInput],
        *,
        channel_order: str = "RGB",
        batch_size: Optional[int] = None,
        errors: str = "raise",
    ) -> List[Prediction]:
        """
        The predictions of ``images`` (paths, PIL images, uint8 arrays in ``channel_order``;
        sizes may differ), in their order, ``batch_size`` (default: the predictor's) images
        per model call. Every input is read before the first model call.

        Args:
            errors: what an input file that is not a readable image does. "raise" (the
                default): :class:`~mask_former.data.io.UnreadableImageError` is raised, before
                any model call. "skip": its Prediction has ``error`` set (``ok`` False, no
                maps), a warning naming it is logged, and the other images are predicted.
                Arrays and PIL images of a wrong type or shape always raise.
        """
        _check_errors(errors)
        loaded = []
        for i, image in enumerate(images):
            source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"<input {i}>"
            loaded.append(_load(source, image, channel_order, errors))
        return self._predict_loaded(loaded, batch_size or self.batch_size)

    def predict_dir(
        self,
        folder: Union[str, "os.PathLike[str]"],
        *,
        recursive: bool = False,
        batch_size: Optional[int] = None,
        progress: bool = True,
        errors: str = "skip",
    ) -> Iterator[Prediction]:
        """
        Predict every image of ``folder`` (:func:`mask_former.data.io.list_images`: names
        ending in ``IMAGE_EXTENSIONS``, any case; with ``recursive`` also its subfolders), in
        sorted path order, ``batch_size`` images per model call, with a progress bar on
        stderr unless ``progress`` is False.

        Args:
            errors: what a file that is not a readable image does. "skip" (the default): it
                does not stop the run; its Prediction has ``error`` set (``ok`` False, no
                maps) and a warning naming it is logged. "raise":
                :class:`~mask_former.data.io.UnreadableImageError` is raised before the model
                call of the file's batch (the earlier batches have been yielded).

        Yields:
            one Prediction per file, in order, as soon as its batch is done.
        """
        import tqdm

        _check_errors(errors)
        paths = io.list_images(folder, recursive=recursive)
        batch_size = batch_size or self.batch_size
        with tqdm.tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                loaded = [_load(path, path, "RGB", errors) for path in chunk]
                yield from self._predict_loaded(loaded, batch_size)
                bar.update(len(chunk))

    def _predict_loaded(self, loaded: Sequence[_Loaded], batch_size: int) -> List[Prediction]:
        """Predictions of read inputs in order, ``batch_size`` readable images per call."""
        readable = [(source, rgb) for source, rgb, _ in loaded if rgb is not None]
        done: List[Prediction] = []
        for start in range(0, len(readable), batch_size):
            done += self._predict_rgb(readable[start : start + batch_size])
        results = iter(done)
        return [failed if failed is not None else next(results) for _, _, failed in loaded]

    def _model_input(self, rgb: np.ndarray) -> Dict[str, Any]:
        """An RGB image -> the model's input dict, as detectron2's DefaultPredictor makes it."""
        image = rgb if self.input_format == "RGB" else rgb[:, :, ::-1]
        height, width = image.shape[:2]
        resized = (
            image if self.resize is None else self.resize.get_transform(image).apply_image(image)
        )
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def _predict_rgb(self, batch: Sequence[Tuple[str, np.ndarray]]) -> List[Prediction]:
        inputs = [self._model_input(rgb) for _, rgb in batch]
        if self.labels_only:
            return self._predict_labels(batch, inputs)
        outputs = self._run(inputs)
        return [
            self._prediction(source, x["height"], x["width"], out)
            for (source, _), x, out in zip(batch, inputs, outputs)
        ]

    @torch.no_grad()
    def _predict_labels(
        self, batch: Sequence[Tuple[str, np.ndarray]], inputs: List[Dict[str, Any]]
    ) -> List[Prediction]:
        """Labels-only predictions: ``semantic`` (H, W) int64 set, no score outputs."""
        if isinstance(self.model, MaskFormer):
            labels = self.model.semantic_labels(inputs)
        else:
            labels = [out["sem_seg"].argmax(dim=0) for out in self._run(inputs)]
        return [
            Prediction(source, x["height"], x["width"], self.class_names, semantic=y.cpu())
            for (source, _), x, y in zip(batch, inputs, labels)
        ]

    @torch.no_grad()
    def _run(self, inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """
        The model's outputs for ``inputs``. MaskFormer groups a call by padded size itself;
        other models pad a batch to its largest image, so they get one call per image size.
        """
        if isinstance(self.model, MaskFormer):
            return self.model(inputs)
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x["image"].shape), []).append(i)
        outputs: List[Dict[str, Any]] = [{} for _ in inputs]
        for indices in groups.values():
            for i, out in zip(indices, self.model([inputs[i] for i in indices])):
                outputs[i] = out
        return outputs

    def _prediction(self, source: str, height: int, width: int, outputs: Dict) -> Prediction:
        names = self.class_names
        result = Prediction(source, height, width, names, outputs=outputs)
        if "sem_seg" in outputs:
            result.semantic = outputs["sem_seg"].argmax(dim=0).cpu()
        if "panoptic_seg" in outputs:
            ids, segments_info = outputs["panoptic_seg"]
            result.panoptic = ids.cpu()
            thing_names = list(self.metadata.get("thing_classes", names))
            result.segments = segments_of(result.panoptic, segments_info, thing_names, names)
        if "instances" in outputs:
            result.instances = outputs["instances"].to("cpu")
        return result

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The Python API for inference: :class:`Predictor` runs a model of a config file on image files,
NumPy arrays and PIL images, several per model call, and returns one :class:`Prediction` per
image with class names attached.

It prepares each image exactly as ``demo/demo.py`` does (detectron2's ``DefaultPredictor``):
read upright per the EXIF orientation, in the model's INPUT.FORMAT, resized by
``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, with the output at the image's own size.
So a result is the demo's result for the same image, whatever batch it comes in: MaskFormer
runs the images of a call in groups of the same padded size (``MaskFormer.run_inference``),
and other models (the per-pixel baselines) get one call per image size.

Shape shorthand in this module: H, W image height and width; K classes; N instances.
"""

import dataclasses
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import get_mask_former_cfg
from .modeling import MaskFormer
from .utils.device import fall_back_to_cpu

__all__ = [
    "IMAGE_EXTENSIONS",
    "Predictor",
    "Prediction",
    "Segment",
    "UnreadableImageError",
    "image_to_rgb",
    "read_image_file",
]

logger = logging.getLogger(__name__)

# The files predict_dir() reads (case-insensitive), as demo/demo.py's folder inputs.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


class UnreadableImageError(ValueError):
    """An input file that is not a readable image; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"Cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Inputs


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """
    (H, W, 3) uint8 RGB of a decoded image, upright per its EXIF orientation: 16-bit (and
    32-bit) grey levels scaled to 8 bits; palette, grey, CMYK converted; alpha dropped.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        levels = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT_MODES or levels.max(initial=0) > 255:
            levels = levels / 257.0  # 65535 -> 255
        grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_image_file(path: Union[str, os.PathLike]) -> np.ndarray:
    """
    Read an image file as ``demo/demo.py`` does: (H, W, 3) uint8, **RGB**, upright per EXIF.

    Raises:
        UnreadableImageError: naming the file and the reason (missing, empty, not an image,
            truncated or corrupt).
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb(image)
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image (unknown format)") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise UnreadableImageError(path, e.strerror or type(e).__name__) from None
    except Exception as e:  # Pillow reports bad data as OSError, SyntaxError, ValueError, ...
        raise UnreadableImageError(path, f"truncated or corrupt ({e})") from None


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
        image: a file path (read by :func:`read_image_file`); a PIL image (turned upright per
            its EXIF orientation, like a file); or a uint8 NumPy array (H, W, 3) in
            ``channel_order``, (H, W, 4) (alpha dropped) or (H, W) grey.
        channel_order: "RGB" (PIL's and most libraries' order: the default) or "BGR"
            (OpenCV's ``cv2.imread``); only used for arrays.
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channel_order)
    raise TypeError(f"Expected a path, a NumPy array or a PIL image, got {type(image).__name__}")


# ---------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Segment:
    """One segment of a panoptic result: its id in ``Prediction.panoptic`` and its class."""

    id: int
    category_id: int
    class_name: str
    isthing: bool
    area: int


@dataclasses.dataclass
class Prediction:
    """
    The result for one image. Maps and instances are on the CPU, at the image's size; the
    model's own output dict (on the model's device) is ``outputs``.

    Attributes:
        source: the file path, or ``"<input i>"`` for the i-th array or PIL image of a call.
        height, width: the image's size.
        class_names: the K class names of the model (index = class id).
        semantic: (H, W) int64 class ids (argmax of the "sem_seg" scores), or None when the
            model gives no semantic output.
        panoptic: (H, W) int32 segment ids (0: no segment), or None.
        segments: the segments of ``panoptic``, with class names.
        instances: "instances" of the model (``pred_masks``, ``pred_classes``, ``scores``),
            or None.
        outputs: the model's output dict for the image ("sem_seg" (K, H, W) scores, ...).
        error: why the image gave no result (predict_dir's unreadable files), else None.
    """

    source: str
    height: int = 0
    width: int = 0
    class_names: List[str] = dataclasses.field(default_factory=list)
    semantic: Optional[torch.Tensor] = None
    panoptic: Optional[torch.Tensor] = None
    segments: List[Segment] = dataclasses.field(default_factory=list)
    instances: Optional[Instances] = None
    outputs: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the image was predicted (``error`` is None)."""
        return self.error is None

    @property
    def instance_class_names(self) -> List[str]:
        """The class name of each instance (empty without instances)."""
        if self.instances is None:
            return []
        return [_class_name(self.class_names, c) for c in self.instances.pred_classes.tolist()]


def _class_name(names: Sequence[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class {class_id}"


def _segments(
    ids: torch.Tensor, segments_info: List[Dict], thing_names: List[str], stuff_names: List[str]
) -> List[Segment]:
    """Segments with class names (things named by thing_classes, stuff by stuff_classes)."""
    values, counts = torch.unique(ids, return_counts=True)
    areas = dict(zip(values.tolist(), counts.tolist()))
    segments = []
    for info in segments_info:
        isthing = bool(info.get("isthing", False))
        names = thing_names if isthing else stuff_names
        category = int(info["category_id"])
        segment_id = int(info["id"])
        area = int(areas.get(segment_id, 0))
        segments.append(Segment(segment_id, category, _class_name(names, category), isthing, area))
    return segments


def predictor_metadata(cfg: CfgNode) -> Metadata:
    """
    The metadata that names the classes: the config's first test set's, as the demo uses;
    generic names "class 0", "class 1", ... for MODEL.SEM_SEG_HEAD.NUM_CLASSES classes when
    that set is not registered or names no classes.
    """
    if len(cfg.DATASETS.TEST):
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if metadata.get("stuff_classes") is not None:
            return metadata
    names = [f"class {i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    return Metadata(name="__predictor_generic").set(stuff_classes=names, thing_classes=names)


# ---------------------------------------------------------------------------------------------
# The predictor


def build_predictor_cfg(
    config: Union[str, os.PathLike, CfgNode],
    weights: Optional[str] = None,
    opts: Sequence[str] = (),
    device: Optional[str] = None,
) -> CfgNode:
    """
    The frozen config of a :class:`Predictor`: ``config`` (a YAML path, merged into
    :func:`get_mask_former_cfg` without unsafe YAML, or a CfgNode, copied), then ``opts``
    (KEY VALUE pairs), ``weights`` (MODEL.WEIGHTS) and ``device`` (MODEL.DEVICE); a CUDA device
    on a machine without CUDA falls back to the CPU with a warning, as in the demo.
    """
    if isinstance(config, CfgNode):
        cfg = config.clone()
        cfg.defrost()
    else:
        cfg = get_mask_former_cfg()
        cfg.merge_from_file(os.fspath(config), allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


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
        config: Union[str, os.PathLike, CfgNode],
        weights: Optional[str] = None,
        *,
        opts: Sequence[str] = (),
        device: Optional[str] = None,
        batch_size: int = 4,
    ):
        """
        Args:
            config: a config file (or a CfgNode), see :func:`build_predictor_cfg`.
            weights: a checkpoint (.pth, .pkl, detectron2:// or URL), loaded with detectron2's
                DetectionCheckpointer; None: the config's MODEL.WEIGHTS.
            opts: config overrides as KEY VALUE pairs, e.g. ("MODEL.MASK_FORMER.TEST.
                OBJECT_MASK_THRESHOLD", "0.5").
            device: "cpu", "cuda", "cuda:1", ...; None: the config's MODEL.DEVICE.
            batch_size: the most images per model call.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.cfg = build_predictor_cfg(config, weights, opts, device)
        self.model = build_model(self.cfg)
        self.model.eval()
        DetectionCheckpointer(self.model).load(self.cfg.MODEL.WEIGHTS)
        min_size, max_size = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        self.resize = T.ResizeShortestEdge([min_size, min_size], max_size)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format!r}")
        self.metadata = predictor_metadata(self.cfg)
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
    ) -> List[Prediction]:
        """
        The predictions of ``images`` (paths, PIL images, uint8 arrays in ``channel_order``;
        sizes may differ), in their order, ``batch_size`` (default: the predictor's) images
        per model call. An unreadable file raises :class:`UnreadableImageError`.
        """
        batch_size = batch_size or self.batch_size
        results: List[Prediction] = []
        batch: List[Tuple[str, np.ndarray]] = []
        for i, image in enumerate(images):
            source = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"<input {i}>"
            batch.append((source, image_to_rgb(image, channel_order)))
            if len(batch) == batch_size:
                results += self._predict_rgb(batch)
                batch = []
        return results + (self._predict_rgb(batch) if batch else [])

    def predict_dir(
        self,
        folder: Union[str, os.PathLike],
        *,
        recursive: bool = False,
        batch_size: Optional[int] = None,
        progress: bool = True,
    ) -> Iterator[Prediction]:
        """
        Predict every image of ``folder`` (files ending in :data:`IMAGE_EXTENSIONS`, any case;
        with ``recursive`` also in its subfolders), in sorted path order, ``batch_size``
        images per model call, with a progress bar on stderr unless ``progress`` is False.

        Yields:
            one Prediction per file, as soon as its batch is done. A file that is not a
            readable image does not stop the run: it yields a Prediction whose ``error`` says
            why (``ok`` is False, no maps), and a warning naming it is logged.
        """
        import tqdm

        paths = list_images(folder, recursive=recursive)
        batch_size = batch_size or self.batch_size
        with tqdm.tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                yield from self._predict_files(chunk)
                bar.update(len(chunk))

    def _predict_files(self, paths: Sequence[str]) -> List[Prediction]:
        """Predictions of ``paths`` in order; unreadable files become error Predictions."""
        readable: List[Tuple[str, np.ndarray]] = []
        failed: Dict[str, Prediction] = {}
        for path in paths:
            try:
                readable.append((path, read_image_file(path)))
            except UnreadableImageError as e:
                logger.warning("skipped %s: %s", path, e.reason)
                failed[path] = Prediction(source=path, error=str(e))
        done = {p.source: p for p in self._predict_rgb(readable)} if readable else {}
        return [failed[path] if path in failed else done[path] for path in paths]

    def _model_input(self, rgb: np.ndarray) -> Dict[str, Any]:
        """An RGB image -> the model's input dict, as detectron2's DefaultPredictor makes it."""
        image = rgb if self.input_format == "RGB" else rgb[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def _predict_rgb(self, batch: Sequence[Tuple[str, np.ndarray]]) -> List[Prediction]:
        inputs = [self._model_input(rgb) for _, rgb in batch]
        outputs = self._run(inputs)
        return [
            self._prediction(source, x["height"], x["width"], out)
            for (source, _), x, out in zip(batch, inputs, outputs)
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
            result.segments = _segments(result.panoptic, segments_info, thing_names, names)
        if "instances" in outputs:
            result.instances = outputs["instances"].to("cpu")
        return result


def list_images(folder: Union[str, os.PathLike], *, recursive: bool = False) -> List[str]:
    """The image files of ``folder`` (by extension, any case), sorted; recursive or not."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder!r} is not a folder")
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))

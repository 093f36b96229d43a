# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The MaskFormer meta-architecture: preprocess -> backbone -> head -> criterion (training) or
semantic / panoptic / instance inference (evaluation).

Shape shorthand in this module:

    B: batch size
    Q: number of queries
    K: number of classes
    N: number of ground-truth segments of an image
    H, W: height and width of the padded batch; h, w of one image
"""

import logging
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList
from detectron2.utils.events import get_event_storage
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn

from .compiled import CompiledNetwork
from .criterion import SetCriterion, loss_weights
from .inference import (
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from .precision import check_inference_precision, inference_autocast_dtype
from .sliding_window import check_slide_options, slide_semantic

__all__ = [
    "INFERENCE_OPTIONS",
    "MaskFormer",
    "batch_inference",
    "check_finite_losses",
    "group_by_padded_size",
    "image_inference",
    "inference_outputs",
    "network_outputs",
    "loss_weights",
    "padded_image_size",
    "prepare_targets",
    "thing_ids_from_metadata",
]

logger = logging.getLogger(__name__)


def check_finite_losses(losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """
    ``losses`` if every one is finite; else a FloatingPointError naming the non-finite losses
    and the training iteration (of detectron2's event storage, where one is open). Raised in
    the forward pass, before backward: no gradient or weight is touched by a NaN/inf loss, and
    no checkpoint is written from it. One host synchronisation for all losses.
    """
    if not losses or bool(torch.stack([v.detach() for v in losses.values()]).isfinite().all()):
        return losses
    bad = {k: v.item() for k, v in losses.items() if not torch.isfinite(v)}
    try:
        where = f"at iteration {get_event_storage().iter}"
    except AssertionError:  # no event storage: not inside a trainer
        where = "outside a training loop"
    raise FloatingPointError(
        f"MaskFormer: non-finite loss {where}: "
        + ", ".join(f"{k} = {v}" for k, v in sorted(bad.items()))
        + ". Training stopped before the backward pass; the weights are those of the last "
        "finite step (lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, check the data)."
    )


def thing_ids_from_metadata(dataset_name: str) -> Set[int]:
    """Contiguous ids of the thing classes of a registered dataset (empty if it has none)."""
    metadata = MetadataCatalog.get(dataset_name)
    return set(getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).values())


def padded_image_size(size: Tuple[int, int], size_divisibility: int) -> Tuple[int, int]:
    """The padded size of an image of ``size`` (h, w) alone, as ImageList.from_tensors pads."""
    if size_divisibility <= 1:
        return tuple(size)
    return tuple((s + size_divisibility - 1) // size_divisibility * size_divisibility for s in size)


def group_by_padded_size(
    sizes: Sequence[Tuple[int, int]], size_divisibility: int
) -> List[List[int]]:
    """
    Indices of the images of ``sizes`` (h, w) grouped by their padded size alone (see
    :func:`padded_image_size`), in order of first appearance, each group in input order.
    """
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(padded_image_size(tuple(size), size_divisibility), []).append(i)
    return list(groups.values())


def prepare_targets(
    instances: Sequence, padded_size: Tuple[int, int], device: torch.device
) -> List[Dict[str, torch.Tensor]]:
    """
    Targets for the criterion from per-image ``Instances`` (``gt_classes`` (N,), ``gt_masks``
    (N, h, w) bool tensor or BitMasks): per image {"labels": (N,) int64, "masks": (N, H, W)} on
    ``device``, the masks zero-padded (bottom/right) to the padded batch size (H, W).
    """
    h_pad, w_pad = padded_size
    targets = []
    for inst in instances:
        masks = inst.gt_masks
        if isinstance(masks, BitMasks):
            masks = masks.tensor
        masks = masks.to(device)
        padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": inst.gt_classes.to(device), "masks": padded})
    return targets


# The MaskFormer settings (constructor arguments and attributes) that image_inference takes.
INFERENCE_OPTIONS = (
    "sem_seg_postprocess_before_inference",
    "semantic_on",
    "panoptic_on",
    "instance_on",
    "thing_ids",
    "object_mask_threshold",
    "overlap_threshold",
    "test_topk_per_image",
)


def image_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    padded_size: Tuple[int, int],
    sem_seg_postprocess_before_inference: bool,
    semantic_on: bool,
    panoptic_on: bool,
    instance_on: bool,
    thing_ids: Set[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    test_topk_per_image: int,
) -> Dict:
    """
    The output dict of one image from its class logits and low-resolution mask logits. The
    mask logits are upsampled to the padded size and cropped to ``size`` as detectron2's
    ``sem_seg_postprocess`` does, and resized to ``output_size`` before inference when
    ``sem_seg_postprocess_before_inference`` (else the semantic scores are).

    Args:
        mask_cls (Tensor): class logits of shape (Q, K + 1).
        mask_pred (Tensor): mask logits of shape (Q, H/4, W/4) of the padded batch.
        size (int, int): (h, w), the image's size in the padded batch.
        output_size (int, int): (height, width) of the results.
        padded_size (int, int): (H, W) of the padded batch.
        the others: the settings of :class:`MaskFormer` of the same names
            (:data:`INFERENCE_OPTIONS`).

    Returns:
        dict: "sem_seg" (K, height, width), "panoptic_seg" and/or "instances", as enabled.
    """
    masks = resize_mask_logits(
        mask_pred, padded_size, size, output_size if sem_seg_postprocess_before_inference else size
    )
    mask_cls = mask_cls.to(masks.dtype)
    result = {}
    if semantic_on:
        semseg = semantic_inference(mask_cls, masks)
        if tuple(semseg.shape[-2:]) != tuple(output_size):
            semseg = sem_seg_postprocess(semseg, size, *output_size)
        result["sem_seg"] = semseg
    if panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls, masks, thing_ids, object_mask_threshold, overlap_threshold
        )
    if instance_on:
        result["instances"] = instance_inference(
            mask_cls, masks, test_topk_per_image, thing_ids=thing_ids if panoptic_on else None
        )
    return result


def inference_outputs(
    backbone: nn.Module, sem_seg_head: nn.Module, images: torch.Tensor, precision: str
) -> Dict[str, torch.Tensor]:
    """
    The network's last-layer outputs in inference: "pred_logits" (B, Q, K + 1) and
    "pred_masks" (B, Q, H/4, W/4), float32, from normalised padded images (B, 3, H, W), with
    the autocast dtype that ``precision`` (TEST.PRECISION) gives on the images' device
    (:func:`network_outputs`).
    """
    dtype = inference_autocast_dtype(precision, images.device.type)
    return network_outputs(backbone, sem_seg_head, images, dtype)


def network_outputs(
    backbone: nn.Module,
    sem_seg_head: nn.Module,
    images: torch.Tensor,
    dtype: Optional[torch.dtype],
) -> Dict[str, torch.Tensor]:
    """
    :func:`inference_outputs` with the autocast ``dtype`` given (None: float32); free of
    side effects, so that it compiles into one graph. On the CPU the images enter a
    convolutional backbone in channels-last layout (oneDNN's convolutions are faster on it, at
    identical results; a backbone whose class sets ``channels_last_input = False``, such as
    Swin, gets them as they are).
    """
    if images.device.type == "cpu" and getattr(backbone, "channels_last_input", True):
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        outputs = sem_seg_head(backbone(images))
    return {key: outputs[key].float() for key in ("pred_logits", "pred_masks")}


def batch_inference(
    outputs: Dict[str, torch.Tensor],
    batched_inputs: List[Dict],
    images: ImageList,
    **options: object,
) -> List[Dict]:
    """
    :func:`image_inference` of every image of a padded batch, retried on the CPU where the
    full-resolution outputs of a large image do not fit on the GPU.

    Args:
        outputs (dict): "pred_logits" (B, Q, K + 1) and "pred_masks" (B, Q, H/4, W/4).
        batched_inputs (list[dict]): the B input dicts, with optional "height" and "width"
            (output size; default: the image's size).
        images (ImageList): the padded batch (B, 3, H, W) and the image sizes.
        options: the keyword-only settings of :func:`image_inference` but ``padded_size``.

    Returns:
        list[dict]: the B result dicts.
    """
    infer = retry_if_cuda_oom(image_inference)
    padded_size = tuple(images.tensor.shape[-2:])
    results = []
    for mask_cls, mask_pred, inputs, size in zip(
        outputs["pred_logits"], outputs["pred_masks"], batched_inputs, images.image_sizes
    ):
        output_size = (inputs.get("height", size[0]), inputs.get("width", size[1]))
        results.append(
            infer(mask_cls, mask_pred, tuple(size), output_size, padded_size=padded_size, **options)
        )
    return results


def _check_outputs_enabled(semantic_on: bool, panoptic_on: bool, instance_on: bool) -> None:
    """ValueError unless at least one kind of inference output is enabled."""
    if not (semantic_on or panoptic_on or instance_on):
        raise ValueError(
            "MaskFormer: enable at least one of MODEL.MASK_FORMER.TEST.SEMANTIC_ON, "
            "PANOPTIC_ON and INSTANCE_ON"
        )


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """
    MaskFormer (:paper:`MaskFormer`): a backbone, a head predicting Q (class, mask) pairs, the
    set criterion for training, and inference turning the pairs into semantic (and optionally
    panoptic and instance) segmentation.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        object_mask_threshold: float,
        overlap_threshold: float,
        thing_ids: Set[int],
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: List[float],
        pixel_std: List[float],
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        test_topk_per_image: int = 100,
        inference_precision: str = "float32",
        test_mode: str = "whole",
        slide_crop_size: Tuple[int, int] = (512, 512),
        slide_stride: Tuple[int, int] = (341, 341),
        test_compile: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 backbone.
            sem_seg_head: returns {"pred_logits", "pred_masks", "aux_outputs"} from features.
            criterion: returns the weighted losses from (outputs, targets).
            object_mask_threshold, overlap_threshold: panoptic inference thresholds.
            thing_ids: contiguous ids of thing classes (panoptic and instance inference).
            size_divisibility: pad the batch to a multiple of this (<0: the backbone's).
            sem_seg_postprocess_before_inference: resize mask logits to the output size before
                inference (forced by panoptic and instance inference).
            pixel_mean, pixel_std: per-channel normalisation of the input image.
            semantic_on, panoptic_on, instance_on: which outputs to produce.
            test_topk_per_image: instances kept per image by instance inference.
            inference_precision: "float32", "bfloat16" or "float16" (autocast of the network
                in inference, where the device supports it; see ``inference_autocast_dtype``).
            test_mode: "whole" or "slide" (sliding-window semantic inference, see
                :mod:`.sliding_window`), with windows of ``slide_crop_size`` (H, W) every
                ``slide_stride`` (H, W) pixels.
            test_compile: run the network of inference calls (no gradients) through
                ``torch.compile``, made on the first such call (:mod:`.compiled`).
        """
        super().__init__()
        _check_outputs_enabled(semantic_on, panoptic_on, instance_on)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.thing_ids = set(thing_ids)
        self.size_divisibility = (
            backbone.size_divisibility if size_divisibility < 0 else size_divisibility
        )
        self.sem_seg_postprocess_before_inference = (
            sem_seg_postprocess_before_inference or panoptic_on or instance_on
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image
        self.inference_precision = check_inference_precision(inference_precision)
        check_slide_options(test_mode, slide_crop_size, slide_stride, panoptic_on, instance_on)
        self.test_mode = test_mode
        self.slide_crop_size = tuple(slide_crop_size)
        self.slide_stride = tuple(slide_stride)
        # A plain object, not a submodule: the state_dict keys stay those of the eager model.
        self.compiled_network = CompiledNetwork(network_outputs) if test_compile else None

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        backbone = build_backbone(cfg)
        train_sets = cfg.DATASETS.TRAIN
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "thing_ids": thing_ids_from_metadata(train_sets[0]) if train_sets else set(),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": (
                mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "inference_precision": mf.TEST.PRECISION,
            "test_mode": mf.TEST.MODE,
            "slide_crop_size": tuple(mf.TEST.SLIDE_CROP_SIZE),
            "slide_stride": tuple(mf.TEST.SLIDE_STRIDE),
            "test_compile": mf.TEST.COMPILE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """
        A (3, h, w) image, 0..255 in the model's input format, normalised on the model's
        device: ``(image - pixel_mean) / pixel_std`` per channel, (3, h, w). Traceable.
        """
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std

    def pad_images(self, images: Sequence[torch.Tensor]) -> ImageList:
        """
        (3, h_i, w_i) images padded with 0 at the bottom and right into one (B, 3, H, W)
        batch, H and W the largest sizes rounded up to ``size_divisibility``
        (``ImageList.from_tensors``; traceable with dynamic sizes for one image).
        """
        return ImageList.from_tensors(list(images), self.size_divisibility)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise each (3, h, w) image and pad the batch (with 0) to (B, 3, H, W)."""
        return self.pad_images([self.normalize(x["image"]) for x in batched_inputs])

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per image with "image" (3, h, w) in the model's input
                format, optionally "height"/"width" (output size, in inference) and
                "instances" (training targets: gt_classes (N,), gt_masks (N, h, w) bool
                tensor or BitMasks).
        Returns:
            training: dict of weighted losses. Inference: one dict per image with "sem_seg"
            (K, height, width), "panoptic_seg" (tuple of (height, width) int32 ids and
            segments info) and/or "instances", as enabled.
        """
        if self.training and any("instances" not in x for x in batched_inputs):
            raise ValueError("MaskFormer in training mode needs 'instances' in every input dict")
        if not self.training:
            return self.run_inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        instances = [x["instances"] for x in batched_inputs]
        targets = prepare_targets(instances, images.tensor.shape[-2:], self.device)
        return check_finite_losses(self.criterion(outputs, targets))

    def run_inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """
        Inference results in input order. Images are run in groups of the same padded size
        (each image's own size rounded up to ``size_divisibility``), so that no image is padded
        more than it would be alone: padding changes the features near the border and what the
        queries attend to, and an image's result must not depend on the batch it came in.
        """
        if self.test_mode == "slide":
            return [{"sem_seg": self.slide_inference(x)} for x in batched_inputs]
        options = {name: getattr(self, name) for name in INFERENCE_OPTIONS}
        sizes = [x["image"].shape[-2:] for x in batched_inputs]
        results: List[Dict] = [{} for _ in batched_inputs]
        for group in group_by_padded_size(sizes, self.size_divisibility):
            inputs = [batched_inputs[i] for i in group]
            images = self.preprocess_image(inputs)
            outputs = self.head_outputs(images.tensor)
            for i, result in zip(group, batch_inference(outputs, inputs, images, **options)):
                results[i] = result
        return results

    def head_outputs(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Normalised padded images (B, 3, H, W) -> the head's last-layer "pred_logits"
        (B, Q, K + 1) and "pred_masks" (B, Q, H/4, W/4), float32 (:func:`inference_outputs`).
        """
        network = self.compiled_network or inference_outputs
        return network(self.backbone, self.sem_seg_head, images, self.inference_precision)

    # The compiled network froze the weights it saw: whatever may change them drops it.
    def load_state_dict(self, *args, **kwargs):
        self._reset_compiled()
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self._reset_compiled()
        return super()._apply(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self._reset_compiled()
        return super().train(mode)

    def _reset_compiled(self) -> None:
        if getattr(self, "compiled_network", None) is not None:
            self.compiled_network.reset()

    def slide_inference(self, inputs: Dict, labels_only: bool = False) -> torch.Tensor:
        """
        Sliding-window semantic inference of one input dict (:mod:`.sliding_window`): the
        scores of each window of ``slide_crop_size`` are the semantic inference of the network
        run on that window alone, averaged where windows overlap and resized to the output
        size ("height", "width"; default: the image's). Works in either ``test_mode``.

        Returns:
            (K, height, width) scores, or with ``labels_only`` (height, width) int64 class ids
            computed band by band of windows (no (K, H, W) score map is held).
        """
        image = inputs["image"]
        size = tuple(image.shape[-2:])
        output_size = (inputs.get("height", size[0]), inputs.get("width", size[1]))
        return slide_semantic(
            self._window_scores,
            image,
            self.slide_crop_size,
            self.slide_stride,
            output_size,
            labels_only=labels_only,
        )

    def _window_scores(self, window: torch.Tensor) -> torch.Tensor:
        """(3, h, w) window of an input image -> its (K, h, w) semantic scores, on its own."""
        images = self.pad_images([self.normalize(window)])
        outputs = self.head_outputs(images.tensor)
        options = {name: getattr(self, name) for name in INFERENCE_OPTIONS}
        options.update(semantic_on=True, panoptic_on=False, instance_on=False)
        size = tuple(window.shape[-2:])
        return image_inference(
            outputs["pred_logits"][0],
            outputs["pred_masks"][0],
            size,
            size,
            padded_size=tuple(images.tensor.shape[-2:]),
            **options,
        )["sem_seg"]

    def semantic_labels(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """
        The semantic class ids (height, width) int64 of each input dict (as :meth:`forward`
        takes them), without the scores: in slide mode computed band by band of windows, so no
        (K, H, W) score map is ever held (memory bounded by a band, for very large images); in
        whole mode the argmax of the "sem_seg" scores (no memory saved).
        """
        if not self.semantic_on:
            raise ValueError("semantic_labels: MODEL.MASK_FORMER.TEST.SEMANTIC_ON is off")
        if self.test_mode == "slide":
            return [self.slide_inference(x, labels_only=True) for x in batched_inputs]
        return [r["sem_seg"].argmax(0) for r in self.run_inference(batched_inputs)]

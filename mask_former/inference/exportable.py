# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
An export-friendly form of :class:`~mask_former.modeling.MaskFormer` inference: one image
tensor in, tensors out, every size computed from the image's shape so that an exported graph
(ONNX, :mod:`mask_former.inference.export`) keeps the image height and width dynamic.

The image is prepared by the model's own functions (``MaskFormer.normalize`` and
``MaskFormer.pad_images``) and run by its backbone and head. Under ``torch.export`` (the
default ONNX exporter) the padding is :func:`pad_to_multiple` instead: the same zero padding,
with the sizes kept symbolic (``pad_images`` puts them in a tensor, whose values
``torch.export`` cannot reason about). The model's inference then groups
images, resizes mask logits with separable matrices and computes semantic scores band by band
with Python loops, to bound memory; here the same math is written as single operations
(upsample, crop, sigmoid, one matrix product), which holds the Q x H x W mask probabilities at
once. This module imports neither onnx nor onnxruntime.

Shape shorthand in this module:

    Q: number of queries
    K: number of classes (class logits have K + 1 entries, the last one is "no object")
    H, W: height and width of the input image; Hp, Wp of the padded image
"""

import contextlib
from typing import Dict, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.inference import ResizedMaskLogits, resize_mask_logits
from ..modeling.meta_arch import MaskFormer
from ..modeling.meta_arch import padded_image_size as padded_size

__all__ = [
    "ExportableMaskFormer",
    "last_layer_only",
    "pad_to_multiple",
    "padded_size",
    "raw_mask_logits",
    "semantic_scores",
]


def raw_mask_logits(
    pred_masks: torch.Tensor, image_size: Tuple[int, int], size_divisibility: int
) -> ResizedMaskLogits:
    """
    The (Q, H, W) mask logits at the image size, as the model's inference makes them, from the
    raw ``pred_masks`` (Q, Hp/4, Wp/4) of an exported graph (``--raw-outputs``); pass them with
    ``pred_logits`` (Q, K + 1) to ``semantic_inference``, ``panoptic_inference`` or
    ``instance_inference`` of :mod:`mask_former.modeling.inference`.
    """
    size = tuple(int(s) for s in image_size)
    return resize_mask_logits(pred_masks, padded_size(size, size_divisibility), size, size)


def pad_to_multiple(image: torch.Tensor, size_divisibility: int) -> torch.Tensor:
    """
    (3, H, W) -> (1, 3, Hp, Wp): zero padding at the bottom and right to the padded size of
    :func:`padded_size`, as ``MaskFormer.pad_images`` pads one image. The sizes are those of
    ``image.shape``, so they stay symbolic (SymInt) under ``torch.export``.
    """
    height, width = image.shape[-2:]
    padded_height, padded_width = padded_size((height, width), size_divisibility)
    return F.pad(image, (0, padded_width - width, 0, padded_height - height))[None]


@contextlib.contextmanager
def last_layer_only(model: MaskFormer) -> Iterator[None]:
    """
    Within the block, the transformer predictor computes the last decoder layer's outputs
    only (no deep-supervision outputs, which inference never reads; they would be traced
    into an exported graph as dead weight). Restores the flags afterwards.
    """
    predictor = getattr(model.sem_seg_head, "predictor", None)
    decoder = getattr(getattr(predictor, "transformer", None), "decoder", None)
    if predictor is None or decoder is None:
        yield
        return
    saved = predictor.deep_supervision, decoder.return_intermediate
    predictor.deep_supervision, decoder.return_intermediate = False, False
    try:
        yield
    finally:
        predictor.deep_supervision, decoder.return_intermediate = saved


class ExportableMaskFormer(nn.Module):
    """
    One image -> semantic scores, or the raw class and mask logits, of a :class:`MaskFormer`
    in eval mode: the model's normalisation and zero padding to its ``size_divisibility``,
    backbone, head, and (unless ``raw_outputs``) semantic inference at the input size. The
    results equal those of ``model([{"image": image}])`` (float32, no ``height``/``width``
    resize).
    """

    def __init__(self, model: MaskFormer, raw_outputs: bool = False):
        """
        Args:
            model: a MaskFormer whose head returns "pred_logits" (mask classification).
            raw_outputs: return (pred_logits, pred_masks) instead of the semantic scores.
        """
        super().__init__()
        if not isinstance(model, MaskFormer):
            raise TypeError(f"ExportableMaskFormer wraps a MaskFormer, got {type(model).__name__}")
        self.model = model
        self.raw_outputs = raw_outputs
        self.eval()  # inference only; an exporter restores this mode afterwards

    @property
    def output_names(self) -> Tuple[str, ...]:
        """The names of :meth:`forward`'s outputs, in order."""
        return ("pred_logits", "pred_masks") if self.raw_outputs else ("sem_seg",)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """
        (3, H, W) or (1, 3, H, W) image, 0..255 in the model's input format -> normalised
        (1, 3, Hp, Wp), zero-padded at the bottom and right: ``MaskFormer.normalize`` and
        ``MaskFormer.pad_images`` (whose sizes stay tensors in a TorchScript trace), or
        :func:`pad_to_multiple` under ``torch.export``.
        """
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one (3, H, W) or (1, 3, H, W) image, got {image.shape}")
        normalized = self.model.normalize(image[0].float())
        if torch.compiler.is_exporting():
            return pad_to_multiple(normalized, self.model.size_divisibility)
        return self.model.pad_images([normalized]).tensor

    def network_outputs(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Normalised padded images (1, 3, Hp, Wp) -> the backbone and head's float32
        "pred_logits" (1, Q, K + 1) and "pred_masks" (1, Q, Hp/4, Wp/4).
        """
        outputs = self.model.sem_seg_head(self.model.backbone(images))
        if "pred_logits" not in outputs:
            raise ValueError("ExportableMaskFormer needs a head with mask classification")
        return {key: outputs[key].float() for key in ("pred_logits", "pred_masks")}

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            image: (3, H, W) or (1, 3, H, W) float, 0..255, in the model's INPUT.FORMAT.
        Returns:
            ``(sem_seg,)``: (K, H, W) scores; with ``raw_outputs``, ``(pred_logits,
            pred_masks)``: (Q, K + 1) and (Q, Hp/4, Wp/4) for :func:`raw_mask_logits`.
        """
        images = self.preprocess(image)
        outputs = self.network_outputs(images)
        mask_cls, mask_pred = outputs["pred_logits"][0], outputs["pred_masks"][0]
        if self.raw_outputs:
            return mask_cls, mask_pred
        return (semantic_scores(mask_cls, mask_pred, images.shape[-2:], image.shape[-2:]),)


def semantic_scores(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, padded: Tuple, size: Tuple
) -> torch.Tensor:
    """
    MaskFormer's semantic inference in plain operations: (Q, h, w) mask logits -> bilinear
    upsampling to the ``padded`` (Hp, Wp) size -> crop to ``size`` (H, W) -> sigmoid ->
    ``sum_q softmax(mask_cls)[q, :K] * mask``: (K, H, W). ``padded`` and ``size`` may be
    traced sizes.
    """
    masks = F.interpolate(mask_pred[None], size=padded, mode="bilinear", align_corners=False)
    masks = masks[0, :, : size[0], : size[1]].sigmoid()
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    scores = torch.matmul(probs.t(), masks.flatten(1))  # (K, H * W)
    return scores.view(-1, masks.shape[1], masks.shape[2])

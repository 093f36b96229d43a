# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
An export-friendly form of :class:`~mask_former.modeling.MaskFormer` inference: one image
tensor in, tensors out, every size computed with tensor operations so that a traced graph
(e.g. ONNX from ``tools/export_model.py``) keeps the image height and width dynamic.

The model's own inference groups images, resizes mask logits with separable matrices and
computes semantic scores band by band with Python loops, to bound memory; here the same math
is written as single operations (upsample, crop, sigmoid, one matrix product), which holds the
Q x H x W mask probabilities at once. This module imports neither onnx nor onnxruntime.

Shape shorthand in this module:

    Q: number of queries
    K: number of classes (class logits have K + 1 entries, the last one is "no object")
    H, W: height and width of the input image; Hp, Wp of the padded image
"""

import contextlib
import logging
import warnings
from typing import Dict, Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .modeling.inference import ResizedMaskLogits, resize_mask_logits
from .modeling.meta_arch import MaskFormer
from .modeling.meta_arch import padded_image_size as padded_size

__all__ = [
    "ExportableMaskFormer",
    "export_onnx",
    "last_layer_only",
    "padded_size",
    "raw_mask_logits",
    "semantic_scores",
]

logger = logging.getLogger(__name__)

# The image size traced by default: not a multiple of 32, so that the padding is exercised.
SAMPLE_SIZE = (200, 300)


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
    in eval mode: normalisation, zero padding to the model's ``size_divisibility``, backbone,
    head, and (unless ``raw_outputs``) semantic inference at the input size. The results equal
    those of ``model([{"image": image}])`` (float32, no ``height``/``width`` resize).
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
        return ("pred_logits", "pred_masks") if self.raw_outputs else ("sem_seg",)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """
        (3, H, W) or (1, 3, H, W) image, 0..255 in the model's input format -> normalised
        (1, 3, Hp, Wp), zero-padded at the bottom and right as ``ImageList.from_tensors`` pads.
        """
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one (3, H, W) or (1, 3, H, W) image, got {image.shape}")
        model = self.model
        image = (image.float() - model.pixel_mean) / model.pixel_std
        stride = model.size_divisibility
        if stride <= 1:
            return image
        h, w = image.shape[-2:]  # traced as tensors: the padding stays dynamic in a graph
        return F.pad(image, (0, (stride - w % stride) % stride, 0, (stride - h % stride) % stride))

    def predict(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(1, 3, Hp, Wp) -> "pred_logits" (1, Q, K + 1), "pred_masks" (1, Q, Hp/4, Wp/4)."""
        outputs = self.model.sem_seg_head(self.model.backbone(image))
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
        outputs = self.predict(images)
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


def _is_float(value: torch._C.Value) -> bool:
    """Whether a TorchScript graph value is a floating-point tensor (False when unknown)."""
    scalar_type = getattr(value.type(), "scalarType", lambda: None)()
    return scalar_type in ("Float", "Double", "Half", "BFloat16")


def _floor_divide_symbolic(g, a: torch._C.Value, b: torch._C.Value) -> torch._C.Value:
    """
    ONNX for ``aten::floor_divide`` that rounds down, as Python's ``//`` does. The TorchScript
    exporter's own truncates, which breaks size arithmetic such as ``-(-h // s) * s`` (the
    Swin backbone's padded window grid) for every size that is not a multiple of ``s``.
    """
    if _is_float(a) or _is_float(b):
        a, b = g.op("Cast", a, to_i=1), g.op("Cast", b, to_i=1)  # 1: FLOAT
        return g.op("Floor", g.op("Div", a, b))
    # Mod with fmod=0 takes the divisor's sign, so a - a mod b is an exact multiple of b.
    return g.op("Div", g.op("Sub", a, g.op("Mod", a, b, fmod_i=0)), b)


@contextlib.contextmanager
def _floor_division_for_onnx(opset: int) -> Iterator[None]:
    """Within the block, the TorchScript ONNX exporter exports ``//`` rounding down."""
    torch.onnx.register_custom_op_symbolic("aten::floor_divide", _floor_divide_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::floor_divide", opset)


def _dynamic_axes(wrapper: ExportableMaskFormer, rank: int) -> Dict[str, Dict[int, str]]:
    """Names of the dynamic axes of the graph's input and outputs."""
    axes = {"image": {rank - 2: "height", rank - 1: "width"}}
    if wrapper.raw_outputs:
        axes["pred_masks"] = {1: "mask_height", 2: "mask_width"}
    else:
        axes["sem_seg"] = {1: "height", 2: "width"}
    return axes


def export_onnx(
    model: MaskFormer,
    path: str,
    *,
    raw_outputs: bool = False,
    batched: bool = False,
    opset: int = 17,
    sample_size: Sequence[int] = SAMPLE_SIZE,
) -> ExportableMaskFormer:
    """
    Export ``model``'s inference on one image to an ONNX file with the TorchScript-based
    exporter (``torch.onnx.export(..., dynamo=False)``), image height and width dynamic.

    Args:
        model: the MaskFormer to export (any device; its weights are saved in the graph).
        path: the ONNX file to write.
        raw_outputs: export (pred_logits, pred_masks) instead of "sem_seg".
        batched: the graph's input is (1, 3, H, W) instead of (3, H, W).
        opset: ONNX opset version.
        sample_size: (H, W) of the random image traced; the graph works for any size.
    Returns:
        the exported :class:`ExportableMaskFormer` (in eval mode).
    """
    wrapper = ExportableMaskFormer(model, raw_outputs=raw_outputs)
    shape = (1, 3, *sample_size) if batched else (3, *sample_size)
    generator = torch.Generator().manual_seed(0)
    sample = (torch.rand(shape, generator=generator) * 255).to(model.device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(last_layer_only(model))
        stack.enter_context(_floor_division_for_onnx(opset))
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(wrapper.output_names),
            dynamic_axes=_dynamic_axes(wrapper, len(shape)),
        )
    # The tracer warns where shapes become Python values; none of them varies with the image
    # size (channel counts, fixed loops), which the export test checks at several sizes.
    logger.debug(
        "ONNX export: %d warnings: %s", len(caught), sorted({w.category.__name__ for w in caught})
    )
    return wrapper

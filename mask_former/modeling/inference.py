# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Inference from MaskFormer's (class, mask) pairs of one image to semantic, panoptic and
instance segmentation. Plain functions of tensors and plain arguments; nothing here reads a
global catalog.

Shape shorthand in this module:

    Q: number of queries
    K: number of classes; class logits have K + 1 entries, the last one is "no object"
    H, W: height and width of the mask logits (the output resolution)
    h, w: height and width of the predicted (low-resolution) mask logits
    R: number of rows of a band of the output

Full-resolution mask logits are large (Q x H x W), and semantic and panoptic inference only
need a band of rows at a time. The functions below therefore accept :class:`ResizedMaskLogits`
besides a plain (Q, H, W) tensor: low-resolution logits with the separable bilinear resize
(upsampling, crop, resize to the output size) that produces the output rows band by band.
"""

from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

__all__ = [
    "ResizedMaskLogits",
    "bilinear_resize_matrix",
    "resize_mask_logits",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
]

# Elements of one band of Q x R x W mask logits (about 4 MB in float32): small enough to stay in
# cache between the resize, the sigmoid and the products that consume it.
BAND_ELEMENTS = 1 << 20
# Semantic inference holds all Q x H x W mask probabilities (float32: 256 MB) up to this size,
# and goes band by band above it (large images).
WHOLE_MASK_ELEMENTS = 1 << 26


def bilinear_resize_matrix(
    in_size: int, out_size: int, *, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """
    The (out_size, in_size) matrix ``A`` of 1-D bilinear resizing with ``align_corners=False``:
    ``A @ x`` equals ``F.interpolate(x, out_size, mode="linear")`` along that axis, with the
    weights PyTorch uses (they are obtained by resizing the identity with F.interpolate).
    """
    eye = torch.eye(in_size, dtype=dtype, device=device)[None, None]
    # Resize along the last axis only; the other axis keeps its size (an exact identity).
    weights = F.interpolate(eye, size=(in_size, out_size), mode="bilinear", align_corners=False)
    return weights[0, 0].t().contiguous()


class ResizedMaskLogits:
    """
    Mask logits (Q, H, W) defined as ``rows @ logits[q] @ cols.T`` for low-resolution logits
    (Q, h, w) and resize matrices ``rows`` (H, h) and ``cols`` (W, w), e.g. the composition of
    the bilinear upsampling to the padded input size, the crop to the image and the resize to
    the requested output size (all linear in the logits). Rows are produced band by band, so
    Q x H x W is never held at once unless :meth:`full` is asked for.
    """

    def __init__(
        self,
        logits: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        upsample_scales: Optional[Tuple[float, float]] = None,
    ):
        """
        Args:
            logits: (Q, h, w) low-resolution mask logits.
            rows: (H, h) resize matrix of the height; cols: (W, w) of the width.
            upsample_scales: set where the matrices are a bilinear upsampling by these (height,
                width) factors and a crop to (H, W) (no resize after it): all rows at once are
                then made by the upsampling kernel itself, which computes only the kept pixels
                (about half the time of the two products, and equal to upsampling the whole
                padded size and cropping).
        """
        if rows.shape[1] != logits.shape[1] or cols.shape[1] != logits.shape[2]:
            raise ValueError(
                f"ResizedMaskLogits: resize matrices {tuple(rows.shape)} / {tuple(cols.shape)} "
                f"do not fit logits of shape {tuple(logits.shape)}"
            )
        self.logits = logits
        self.rows = rows.to(logits)
        self.cols = cols.to(logits)
        self.upsample_scales = upsample_scales
        self._width_resized = None  # (Q, h, W), computed on first use

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.logits.shape[0], self.rows.shape[0], self.cols.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def device(self) -> torch.device:
        return self.logits.device

    def band(self, start: int, stop: int, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``start:stop`` of the (selected ``queries`` of the) logits: (Q', R, W), new."""
        if self.upsample_scales is not None and start == 0 and stop == self.shape[1]:
            logits = self.logits if queries is None else self.logits[queries]
            size = [self.shape[1], self.shape[2]]
            return torch._C._nn.upsample_bilinear2d(
                logits[None], size, False, *self.upsample_scales
            )[0]
        if self._width_resized is None:
            q, h, w = self.logits.shape
            flat = self.logits.reshape(q * h, w) @ self.cols.t()
            self._width_resized = flat.view(q, h, -1)
        resized = self._width_resized
        if queries is not None:
            resized = resized[queries]
        return torch.matmul(self.rows[start:stop], resized)

    def full(self, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All rows: (Q', H, W)."""
        return self.band(0, self.shape[1], queries)


MaskLogits = Union[torch.Tensor, ResizedMaskLogits]


def resize_mask_logits(
    mask_pred: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> ResizedMaskLogits:
    """
    The mask logits of one image at ``output_size``, as detectron2's postprocessing makes them
    from the model's: bilinear upsampling of (Q, h, w) to the padded batch size, crop to the
    image's (unpadded) size, bilinear resize to ``output_size`` (skipped where the size does
    not change, which is an identity). The three linear steps are composed into one pair of
    resize matrices, so only the rows of the output are ever computed.

    Args:
        mask_pred: (Q, h, w) mask logits.
        padded_size: (H_pad, W_pad) of the padded batch the model saw.
        image_size: (h_img, w_img) of this image inside the padded batch.
        output_size: (H, W) requested.
    """
    matrices, scales = [], []
    for axis in (0, 1):
        low, padded = mask_pred.shape[1 + axis], padded_size[axis]
        image, output = image_size[axis], output_size[axis]
        matrix = bilinear_resize_matrix(low, padded, dtype=mask_pred.dtype, device=mask_pred.device)
        matrix = matrix[:image]
        scales.append(padded / low if output == image else None)
        if output != image:
            resize = bilinear_resize_matrix(
                image, output, dtype=mask_pred.dtype, device=mask_pred.device
            )
            matrix = resize @ matrix
        matrices.append(matrix)
    upsample = None if None in scales else (scales[0], scales[1])
    return ResizedMaskLogits(mask_pred, *matrices, upsample_scales=upsample)


def _bands(mask_pred: MaskLogits, num_queries: int) -> Iterator[Tuple[int, int]]:
    """
    Row ranges [start, stop) of about BAND_ELEMENTS elements for ``num_queries`` queries, or
    all rows at once up to WHOLE_MASK_ELEMENTS (then the upsampling kernel makes them, see
    :class:`ResizedMaskLogits`).
    """
    _, height, width = mask_pred.shape
    if num_queries * height * width <= WHOLE_MASK_ELEMENTS:
        yield 0, height
        return
    step = max(1, BAND_ELEMENTS // max(1, num_queries * width))
    for start in range(0, height, step):
        yield start, min(height, start + step)


def _band(
    mask_pred: MaskLogits, start: int, stop: int, queries: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rows start:stop of (some queries of) the logits as a new tensor (Q', R, W)."""
    if isinstance(mask_pred, ResizedMaskLogits):
        return mask_pred.band(start, stop, queries)
    band = mask_pred[:, start:stop]
    return (band if queries is None else band[queries]).clone()


def semantic_inference(mask_cls: torch.Tensor, mask_pred: MaskLogits) -> torch.Tensor:
    """
    Per-pixel class scores: ``semseg[k, h, w] = sum_q softmax(mask_cls[q])[k] *
    sigmoid(mask_pred[q, h, w])`` over the K real classes (the no-object probability is
    dropped, so scores are not normalised and may exceed 1). Computed band by band of rows.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits, a tensor or :class:`ResizedMaskLogits`.
    Returns:
        (K, H, W) class scores.
    """
    num_queries, height, width = mask_pred.shape
    probs_t = F.softmax(mask_cls, dim=-1)[..., :-1].t().contiguous().to(mask_pred.dtype)
    semseg = torch.empty(
        (probs_t.shape[0], height, width), dtype=mask_pred.dtype, device=mask_pred.device
    )
    if num_queries * height * width <= WHOLE_MASK_ELEMENTS:
        # One product written straight into the result: with many classes the K x H x W output
        # dominates, and a band's (K, R, W) product would be made apart and then copied.
        masks = _band(mask_pred, 0, height).sigmoid_().view(num_queries, -1)
        torch.mm(probs_t, masks, out=semseg.view(probs_t.shape[0], -1))
        return semseg
    for start, stop in _bands(mask_pred, num_queries):
        band = _band(mask_pred, start, stop).sigmoid_().view(num_queries, -1)
        semseg[:, start:stop] = (probs_t @ band).view(-1, stop - start, width)
    return semseg


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: MaskLogits,
    thing_ids: Set[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    MaskFormer's panoptic inference. Queries predicting "no object", or whose best class
    probability is not above ``object_mask_threshold``, are dropped. Every pixel goes to the
    kept query with the highest ``probability * sigmoid(mask)``. A query becomes a segment if
    it owns at least one pixel, its own mask (sigmoid >= 0.5) is not empty, and the owned area
    is at least ``overlap_threshold`` of its own mask area. Queries of the same stuff class
    share one segment. Segment ids count from 1 in query order; 0 is void. Masks are visited
    band by band of rows, so no full-resolution (Q, H, W) temporary is made.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits, a tensor or :class:`ResizedMaskLogits`.
        thing_ids: contiguous class ids that are things (all others are stuff).
        object_mask_threshold: minimum class probability of a kept query (exclusive).
        overlap_threshold: minimum owned / own-mask area ratio of a segment.
    Returns:
        panoptic_seg: (H, W) int32 segment ids.
        segments_info: one dict per segment: {"id", "isthing", "category_id"}.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    kept = keep.nonzero()[:, 0]
    scores, labels = scores[kept].to(mask_pred.dtype), labels[kept]

    device = mask_pred.device
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=device)
    if kept.numel() == 0:
        return panoptic_seg, []
    owner, own_area = _mask_owners(mask_pred, kept, scores)
    owned_area = torch.bincount(owner.flatten(), minlength=kept.numel())
    segment_of_query, segments_info = _panoptic_segments(
        labels.tolist(), owned_area.tolist(), own_area.tolist(), thing_ids, overlap_threshold
    )
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=device)
    return lookup[owner], segments_info


def _mask_owners(
    mask_pred: MaskLogits, queries: torch.Tensor, scores: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    For the Q' given queries with their class ``scores`` (Q',): the index (into ``queries``) of
    the query with the highest ``score * sigmoid(mask)`` at each pixel, (H, W) int64, and the
    area of each query's own mask (sigmoid >= 0.5), (Q',).
    """
    owner = torch.empty(mask_pred.shape[-2:], dtype=torch.int64, device=mask_pred.device)
    own_area = torch.zeros(queries.numel(), dtype=torch.int64, device=mask_pred.device)
    for start, stop in _bands(mask_pred, queries.numel()):
        masks = _band(mask_pred, start, stop, queries).sigmoid_()
        own_area += (masks >= 0.5).sum((1, 2))
        owner[start:stop] = masks.mul_(scores.view(-1, 1, 1)).argmax(0)
    return owner, own_area


def _panoptic_segments(
    labels: Sequence[int],
    owned_area: Sequence[int],
    own_area: Sequence[int],
    thing_ids: Set[int],
    overlap_threshold: float,
) -> Tuple[List[int], List[Dict]]:
    """
    Segment id of each kept query (0: void) and the segments' info, in query order: a query
    becomes a segment if it owns pixels, its own mask is not empty and the owned share of its
    own mask reaches ``overlap_threshold``; queries of one stuff class share a segment.
    """
    segment_of_query = [0] * len(labels)
    segments_info: List[Dict] = []
    stuff_segment_id: Dict[int, int] = {}
    for k, category_id in enumerate(labels):
        owned, own = owned_area[k], own_area[k]
        if owned == 0 or own == 0 or owned / own < overlap_threshold:
            continue
        isthing = category_id in thing_ids
        if not isthing and category_id in stuff_segment_id:
            # Another query of this stuff class already made a segment: extend it.
            segment_of_query[k] = stuff_segment_id[category_id]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment_id[category_id] = segment_id
        segment_of_query[k] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": category_id})
    return segment_of_query, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: MaskLogits,
    topk: int,
    thing_ids: Optional[Set[int]] = None,
) -> Instances:
    """
    Mask2Former's instance inference: the ``topk`` highest (query, class) probabilities over
    all Q x K pairs (not sorted), each giving one instance with the query's mask.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits, a tensor or :class:`ResizedMaskLogits`.
        topk: number of (query, class) pairs kept (at most Q * K).
        thing_ids: if given, pairs whose class is not in it are dropped after the top-k.
    Returns:
        Instances of image size (H, W) with ``pred_masks`` (N, H, W) float 0/1 (logit > 0),
        ``pred_boxes`` (all zeros: boxes from masks are not computed), ``scores`` (N,) =
        class probability x mean mask probability inside the binary mask, and
        ``pred_classes`` (N,) int64.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    scores, flat_idx = probs.flatten().topk(min(topk, num_queries * num_classes), sorted=False)
    classes = flat_idx % num_classes
    queries = torch.div(flat_idx, num_classes, rounding_mode="floor")
    if thing_ids is not None:
        keep = torch.tensor(
            [c in thing_ids for c in classes.tolist()], dtype=torch.bool, device=classes.device
        )
        scores, classes, queries = scores[keep], classes[keep], queries[keep]
    if isinstance(mask_pred, ResizedMaskLogits):
        masks = mask_pred.full(queries)
    else:
        masks = mask_pred[queries]

    result = Instances(tuple(mask_pred.shape[-2:]))
    binary = (masks > 0).float()
    result.pred_masks = binary
    result.pred_boxes = Boxes(torch.zeros(masks.shape[0], 4, device=masks.device))
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
        binary.flatten(1).sum(1) + 1e-6
    )
    result.scores = scores * mask_scores
    result.pred_classes = classes
    return result

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Sliding-window semantic inference (``MODEL.MASK_FORMER.TEST.MODE "slide"``), with the
behaviour of mmsegmentation's slide inference: windows of a crop size every stride pixels over
the (test-resized) image, the last window of each row and column aligned to the image's border
(a window is never larger than the image), each window's semantic scores computed on its own,
and every pixel's scores divided by the number of windows covering it.

Memory is bounded by a band of windows, not by the image: the windows are run one row of
windows (a band) at a time, summed into a buffer of the rows that band touches, and the rows no
later band touches are finalised (divided by their window counts) and handed on: written into
the full score map, or, for labels only, turned into class ids by argmax (after the resize to
the output size) and dropped. The labels-only path thus holds about K x (crop height + stride)
x W scores besides the network, never K x H x W.

Shape shorthand in this module:

    K: number of classes
    H, W: height and width of the image the windows cover (the test scale)
    R: number of rows of a band
    H', W': height and width of the output
"""

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess

from .inference import bilinear_resize_matrix

__all__ = [
    "TEST_MODES",
    "check_slide_options",
    "slide_semantic",
    "window_coverage",
    "window_starts",
]

TEST_MODES = ("whole", "slide")
_KEY = "MODEL.MASK_FORMER.TEST"

# (3, R, W') window of the normalised image -> (K, R, W') semantic scores.
WindowScores = Callable[[torch.Tensor], torch.Tensor]


def check_slide_options(
    mode: str,
    crop_size: Sequence[int],
    stride: Sequence[int],
    panoptic_on: bool = False,
    instance_on: bool = False,
) -> None:
    """
    ValueError naming the config key unless ``mode`` is one of :data:`TEST_MODES`; ``crop_size``
    and ``stride`` are (H, W) pairs of positive ints with the stride at most the crop size in
    each direction (checked in every mode, so a config is not valid in one mode only); and
    slide mode comes without panoptic and instance inference (segments and instances cut by
    window borders have no sound average).
    """
    if mode not in TEST_MODES:
        raise ValueError(f"{_KEY}.MODE must be one of {TEST_MODES}, got {mode!r}")
    for name, value in (("SLIDE_CROP_SIZE", crop_size), ("SLIDE_STRIDE", stride)):
        if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
            raise ValueError(
                f"{_KEY}.{name} must be two positive integers (H, W), got {tuple(value)!r}"
            )
    if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
        raise ValueError(
            f"{_KEY}.SLIDE_STRIDE {tuple(stride)} must not exceed {_KEY}.SLIDE_CROP_SIZE "
            f"{tuple(crop_size)} in either direction: pixels between windows would be missed"
        )
    if mode == "slide" and (panoptic_on or instance_on):
        raise ValueError(
            f'{_KEY}.MODE "slide" gives semantic segmentation only: turn off {_KEY}.PANOPTIC_ON '
            f'and {_KEY}.INSTANCE_ON, or use MODE "whole" (segments and instances cut by window '
            "borders cannot be averaged)"
        )


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """
    The first pixel of each window along one axis of ``length`` pixels: 0, stride, 2 stride, ...
    as many as needed to reach the end, the last one moved back so that its window ends at the
    border. Windows are ``min(crop, length)`` long; one window when the crop covers the axis.
    """
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, length) - crop, 0) for i in range(count)]


def window_coverage(length: int, starts: Sequence[int], crop: int) -> torch.Tensor:
    """(length,) float32: how many windows of ``min(crop, length)`` at ``starts`` cover a pixel."""
    coverage = torch.zeros(length, dtype=torch.float32)
    size = min(crop, length)
    for start in starts:
        coverage[start : start + size] += 1
    return coverage


class _BandResizer:
    """
    Bilinear resize (``align_corners=False``, as detectron2's ``sem_seg_postprocess``) of a
    (K, H, W) score map fed as consecutive finalised bands of rows, to class ids (H', W') by
    argmax. Output rows are made as soon as every input row they read is in, and input rows are
    dropped once no later output row reads them, so only a few bands are held.
    """

    def __init__(self, in_size: Tuple[int, int], out_size: Tuple[int, int], labels: torch.Tensor):
        device = labels.device
        self.rows = bilinear_resize_matrix(in_size[0], out_size[0], device=device)  # (H', H)
        self.cols = bilinear_resize_matrix(in_size[1], out_size[1], device=device)  # (W', W)
        used = self.rows != 0
        columns = torch.arange(in_size[0], device=device).expand_as(used)
        self.first = torch.where(used, columns, in_size[0]).min(1).values.tolist()
        self.last = torch.where(used, columns, -1).max(1).values.tolist()
        self.labels = labels
        self.pending: Optional[torch.Tensor] = None  # (K, R, W) input rows [start, stop)
        self.start = self.stop = self.done = 0

    def put(self, band: torch.Tensor) -> None:
        """Add the next input rows (K, R, W) and write every output row they complete."""
        pending = band if self.pending is None else torch.cat([self.pending, band], 1)
        self.stop += band.shape[1]
        end = self.done
        while end < len(self.last) and self.last[end] < self.stop:
            end += 1
        if end > self.done:
            weights = self.rows[self.done : end, self.start : self.stop]
            resized = torch.matmul(weights, pending) @ self.cols.t()  # (K, R', W')
            self.labels[self.done : end] = resized.argmax(0)
            self.done = end
        keep_from = self.first[self.done] if self.done < len(self.first) else self.stop
        keep_from = max(keep_from, self.start)
        self.pending = pending[:, keep_from - self.start :]
        self.start = keep_from


def _finalised_bands(
    window_scores: WindowScores,
    image: torch.Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
):
    """
    Yield (start, scores): the averaged scores (K, R, W) of rows ``start:start + R`` of the
    image (3, H, W), top to bottom, each as soon as no later window touches those rows. The
    windows are run in row-major order, so every pixel sums its windows' scores in that order.
    """
    height, width = image.shape[-2:]
    ys = window_starts(height, crop_size[0], stride[0])
    xs = window_starts(width, crop_size[1], stride[1])
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    row_cover = window_coverage(height, ys, crop_size[0]).to(image.device)
    col_cover = window_coverage(width, xs, crop_size[1]).to(image.device)
    buffer: Optional[torch.Tensor] = None  # (K, R, W): rows [start, start + R) of the sums
    start = 0
    for j, y in enumerate(ys):
        for x in xs:
            scores = window_scores(image[:, y : y + crop_h, x : x + crop_w])
            if buffer is None:
                buffer = scores.new_zeros((scores.shape[0], crop_h, width))
            elif buffer.shape[1] < y + crop_h - start:  # grow the buffer down to this band
                grown = buffer.new_zeros((buffer.shape[0], y + crop_h - start, width))
                grown[:, : buffer.shape[1]] = buffer
                buffer = grown
            buffer[:, y - start : y - start + crop_h, x : x + crop_w] += scores
            del scores
        final = ys[j + 1] if j + 1 < len(ys) else height
        count = row_cover[start:final, None] * col_cover[None, :]
        yield start, buffer[:, : final - start] / count
        buffer = buffer[:, final - start :]
        start = final


def slide_semantic(
    window_scores: WindowScores,
    image: torch.Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
    output_size: Tuple[int, int],
    *,
    labels_only: bool = False,
) -> torch.Tensor:
    """
    Sliding-window semantic inference of one image.

    Args:
        window_scores: (3, R, W') window of ``image`` -> its (K, R, W') semantic scores.
        image: (3, H, W) image (as ``window_scores`` takes it, e.g. normalised), any device.
        crop_size, stride: (H, W) of the windows and of the steps between them (see
            :func:`window_starts`).
        output_size: (H', W') of the result; the averaged scores are resized to it bilinearly
            (``align_corners=False``, as detectron2's ``sem_seg_postprocess``) where it differs.
        labels_only: return class ids, computed band by band without a (K, H, W) map.

    Returns:
        (K, H', W') averaged scores, or with ``labels_only`` (H', W') int64 class ids (equal to
        the argmax over K of the scores wherever they have no tie within rounding).
    """
    size = tuple(image.shape[-2:])
    output_size = tuple(output_size)
    bands = _finalised_bands(window_scores, image, crop_size, stride)
    if not labels_only:
        semseg: Optional[torch.Tensor] = None
        for start, scores in bands:
            if semseg is None:
                semseg = scores.new_empty((scores.shape[0], *size))
            semseg[:, start : start + scores.shape[1]] = scores
        return semseg if output_size == size else sem_seg_postprocess(semseg, size, *output_size)
    labels = torch.empty(output_size, dtype=torch.int64, device=image.device)
    resizer = None if output_size == size else _BandResizer(size, output_size, labels)
    for start, scores in bands:
        if resizer is None:
            labels[start : start + scores.shape[1]] = scores.argmax(0)
        else:
            resizer.put(scores)
    return labels

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Memory-lean full-resolution mask losses: the sigmoid focal and dice losses of mask logits
bilinearly upsampled to the target resolution, computed a few masks at a time together with
their analytic gradient, so that no full-resolution tensor outlives its chunk.

The plain formulas (:func:`~mask_former.modeling.criterion.sigmoid_focal_loss` and
:func:`~mask_former.modeling.criterion.dice_loss` on ``F.interpolate``-upsampled logits) stay the
reference; :func:`sigmoid_focal_dice_loss` gives the same values and gradients. Autograd would
keep about ten (M, H, W) float tensors per decoder layer for backward; here forward already
computes the per-pixel derivatives of both losses and folds them back to the prediction grid
through the adjoint of the upsampling, so only a (2, M, h, w) tensor is kept per layer and
backward is one multiply-add of it.

Speed on the CPU comes from doing few passes over full-resolution data and few operations:
chunks of several masks, a workspace allocated once per call (fresh large allocations cost page
faults), all the sums of a chunk from one stacked tensor (a row sum and a batched product with
the targets), and the adjoint of the upsampling as two matrix products. Only operations with
vectorised CPU kernels are used: ``softplus``, ``log1p`` and ``logsigmoid`` are scalar loops
there, tens of times slower than ``sigmoid``.

Shape shorthand in this module:

    M: number of matched (prediction, target) pairs
    T: number of target masks the pairs pick from (all segments of the batch)
    C: number of masks in one chunk
    H, W: height and width of the target masks
    h, w: height and width of the predicted masks
    P: number of pixels of a target mask, H * W
"""

import functools
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "sigmoid_focal_dice_loss",
    "stack_target_masks",
    "upsample_bilinear_adjoint",
    "DEFAULT_CHUNK_PIXELS",
]

# Target pixels processed at once (whole masks, at least one): 2**21 is eight 512 x 512 masks,
# 8 MiB per float temporary and about 60 MiB of workspace. Measured on 2 CPU threads: 1 to 8
# masks per chunk cost within 20% of each other on idle cores, but with other processes on the
# cores 8-mask chunks were up to 3x faster than 1- or 2-mask ones (each operation is a parallel
# region whose threads must all get the CPU); larger chunks only add memory.
DEFAULT_CHUNK_PIXELS = 2**21


@functools.lru_cache(maxsize=64)
def _linear_matrix(
    size_in: int, size_out: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """
    ``F.interpolate(mode="linear", align_corners=False)`` from ``size_in`` to ``size_out`` as a
    matrix A of shape (size_out, size_in), ``out = A @ x``: aten's response to each unit
    impulse, so its entries are the weights aten uses (clamped source indices at the borders
    included). Computed in float32 for reduced-precision dtypes, as aten does.
    """
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    impulses = torch.eye(size_in, dtype=exact, device=device)[None]
    response = F.interpolate(impulses, size=size_out, mode="linear", align_corners=False)
    return response[0].T.to(dtype).contiguous()


def upsample_bilinear_adjoint(grad: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """
    Adjoint (backward) of ``F.interpolate(x, size=grad.shape[-2:], mode="bilinear",
    align_corners=False)`` for x of spatial size ``size``.

    Bilinear interpolation is separable, ``up = A_h x A_w^T`` with the 1-D interpolation
    matrices A_h (H, h) and A_w (W, w), so its adjoint is ``A_h^T grad A_w``: two batched
    matrix products, for any sizes. On the CPU this is several times faster than aten's
    ``upsample_bilinear2d_backward`` or a strided convolution with the interpolation weights
    (one input channel: 0.8 vs 5.0 ms for 130 masks of 128 x 128 -> 32 x 32 on 2 threads).

    Args:
        grad (Tensor): gradient w.r.t. the upsampled tensor, shape (N, D, H, W).
        size (tuple[int, int]): (h, w), the input's spatial size.

    Returns:
        Tensor: gradient w.r.t. the input, shape (N, D, h, w).
    """
    (num, depth, height, width), (h, w) = grad.shape, tuple(size)
    rows = _linear_matrix(h, height, grad.dtype, grad.device)  # (H, h)
    cols = _linear_matrix(w, width, grad.dtype, grad.device)  # (W, w)
    narrow = grad.reshape(num * depth, height, width) @ cols  # (N D, H, w)
    return (rows.T @ narrow).reshape(num, depth, h, w)


class _Workspace:
    """
    Full-resolution temporaries of a chunk, allocated once per call and reused by every chunk.
    ``sums`` holds, for C masks, the rows [sigmoid(z) (C), focal loss (C), targets (C)]
    contiguously, so that one row sum and one batched product give every sum a chunk needs.
    """

    def __init__(self, like: torch.Tensor, rows: int, num_pixels: int, with_grad: bool):
        self.num_pixels = num_pixels
        self.sums = like.new_empty(3 * rows * num_pixels)
        self.bce = like.new_empty((rows, num_pixels))
        self.mask = torch.empty((rows, num_pixels), dtype=torch.uint8, device=like.device)
        self.grad = like.new_empty(2 * rows * num_pixels) if with_grad else None

    def take(self, rows: int) -> Dict[str, Optional[torch.Tensor]]:
        """Views for ``rows`` masks: "sums" (3, rows, P), "sig", "focal", "targets", "bce",
        "mask" (rows, P) and "grad" (2, rows, P) or None."""
        sums = self.sums[: 3 * rows * self.num_pixels].view(3, rows, self.num_pixels)
        sig, focal, targets = sums.unbind(0)
        grad = None
        if self.grad is not None:
            grad = self.grad[: 2 * rows * self.num_pixels].view(2, rows, self.num_pixels)
        return {
            "sums": sums,
            "sig": sig,
            "focal": focal,
            "targets": targets,
            "bce": self.bce[:rows],
            "mask": self.mask[:rows],
            "grad": grad,
        }


def _chunk_losses(
    logits: torch.Tensor, work: Dict[str, Optional[torch.Tensor]], alpha: float, gamma: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Focal (mean over pixels) and dice losses (C,) of the upsampled logits (C, P), overwritten,
    against the float 0/1 ``work["targets"]`` (C, P). With a ``work["grad"]`` buffer, also
    writes there the derivatives of the focal loss SUM (negated) and of the dice loss w.r.t.
    every logit.

    With binary targets both losses depend on ``z = x (1 - 2t)``, the logit of the wrong
    answer: ``sigmoid(z) = 1 - p_t`` and ``softplus(z) = BCE``, so
    ``focal = alpha_t sigmoid(z)^gamma softplus(z)`` and ``p = t + (1 - 2t) sigmoid(z)``.
    """
    sig, targets, bce = work["sig"], work["targets"], work["bce"]
    z = logits.addcmul_(logits, targets, value=-2.0)
    torch.sigmoid(z, out=sig)
    # softplus(z) = relu(z) - log(sigmoid(|z|)): the log's argument is in [0.5, 1], so this is
    # accurate to float rounding (and uses vectorised kernels only).
    torch.abs(z, out=bce).sigmoid_().log_()
    torch.sub(z.clamp_(min=0), bce, out=bce)
    modulator = torch.pow(sig, gamma, out=logits)  # z is not needed any more
    torch.mul(modulator, bce, out=work["focal"])
    # Sums (3, C) of [sig; focal; t] over all pixels and over the positive ones (a batched
    # product with each mask's targets: one pass, where a (3C, P) x (P, C) product computes
    # C times too much for many small masks).
    sums = work["sums"]
    total = sums.sum(-1)
    on_pos = torch.bmm(sums.transpose(0, 1), targets[:, :, None])[..., 0].T
    focal = total[1]
    if alpha >= 0:  # alpha_t = (1 - alpha) + (2 alpha - 1) t
        focal = focal * (1 - alpha) + on_pos[1] * (2 * alpha - 1)
    intersection = total[2] - on_pos[0]  # sum(p t) = sum(t (1 - sigmoid(z)))
    denominator = total[0] - 2 * on_pos[0] + 2 * total[2] + 1  # sum(p) + sum(t) + 1
    dice = 1 - (2 * intersection + 1) / denominator
    if work["grad"] is not None:
        _pixel_gradients(work, modulator, alpha, gamma, intersection, denominator)
    return focal / targets.shape[1], dice


def _pixel_gradients(
    work: Dict[str, Optional[torch.Tensor]],
    modulator: torch.Tensor,
    alpha: float,
    gamma: float,
    intersection: torch.Tensor,
    denominator: torch.Tensor,
) -> None:
    """
    Derivatives (C, P) w.r.t. the logits x of the per-pixel focal loss, NEGATED, and of the
    dice loss, written to ``work["grad"][0]`` and ``[1]``. Overwrites ``modulator``,
    ``work["bce"]`` and ``work["focal"]``.
    """
    sig, targets, bce, grad = work["sig"], work["targets"], work["bce"], work["grad"]
    # d/dz [sigmoid(z)^g softplus(z)] = sigmoid(z)^g (sigmoid(z) + g (1 - sigmoid(z)) softplus(z))
    focal = torch.add(sig, bce, alpha=gamma, out=grad[0]).addcmul_(sig, bce, value=-gamma)
    # times dz/dx alpha_t = (1 - 2t) alpha_t, i.e. (1 - alpha) - t with alpha, 1 - 2t without;
    # negated, which saves a pass (the caller flips the sign on the prediction grid).
    if alpha >= 0:
        negated_weight = torch.sub(targets, 1 - alpha, out=work["focal"])
    else:
        negated_weight = torch.mul(targets, 2.0, out=work["focal"]).sub_(1)
    focal.mul_(modulator.mul_(negated_weight))
    # d dice / d p_i = (2 I + 1) / D^2 - 2 t_i / D, and d p / d x = p (1 - p), which is
    # sigmoid(z) (1 - sigmoid(z)) whatever the target.
    coef = torch.mul(targets, (-2 / denominator)[:, None], out=bce)
    coef.add_(((2 * intersection + 1) / denominator**2)[:, None])
    torch.addcmul(sig, sig, sig, value=-1.0, out=grad[1]).mul_(coef)


class _SigmoidFocalDice(torch.autograd.Function):
    """Per-mask focal and dice losses with their gradient computed in forward (see module)."""

    @staticmethod
    def forward(ctx, logits, targets, target_index, alpha, gamma, chunk_pixels, with_grad):
        num, (height, width) = logits.shape[0], targets.shape[-2:]
        chunk = max(1, min(num, chunk_pixels // (height * width)))
        workspace = _Workspace(logits, chunk, height * width, with_grad)
        focal, dice = logits.new_empty(num), logits.new_empty(num)
        grad = logits.new_empty((2,) + logits.shape) if with_grad else None
        for start in range(0, num, chunk):
            end = min(start + chunk, num)
            work = workspace.take(end - start)
            upsampled = F.interpolate(
                logits[start:end, None], (height, width), mode="bilinear", align_corners=False
            )
            # As uint8: index_select of bool is an element loop, ~100x slower on the CPU.
            mask = work["mask"].view(-1, height, width)
            torch.index_select(targets.view(torch.uint8), 0, target_index[start:end], out=mask)
            work["targets"].copy_(work["mask"])
            focal[start:end], dice[start:end] = _chunk_losses(
                upsampled.view(end - start, -1), work, alpha, gamma
            )
            if with_grad:
                pixel_grad = work["grad"].view(2, -1, height, width)
                grad[:, start:end] = upsample_bilinear_adjoint(pixel_grad, logits.shape[-2:])
        if with_grad:
            grad[0] /= -height * width  # the sign, see _pixel_gradients
        ctx.save_for_backward(grad)
        return focal, dice

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_focal, grad_dice):
        (grad,) = ctx.saved_tensors
        if grad is None:
            raise RuntimeError("sigmoid_focal_dice_loss: backward without gradients in forward")
        grad_logits = torch.zeros_like(grad[0])
        if grad_focal is not None:
            grad_logits.addcmul_(grad[0], grad_focal[:, None, None])
        if grad_dice is not None:
            grad_logits.addcmul_(grad[1], grad_dice[:, None, None])
        return grad_logits, None, None, None, None, None, None


def sigmoid_focal_dice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_index: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Per-mask sigmoid focal loss (mean over pixels) and dice loss of mask logits bilinearly
    upsampled (``align_corners=False``) to the target size, against binary targets. Equal, in
    value and gradient w.r.t. ``logits``, to the per-mask terms of ``sigmoid_focal_loss`` and
    ``dice_loss`` on ``F.interpolate(logits[:, None], (H, W))`` and ``targets[target_index]``,
    with memory that does not grow with the number of pixels per mask.

    Computed in the dtype of ``logits``, with autocast off. Double backward is not supported.

    Args:
        logits (Tensor): predicted mask logits of shape (M, h, w), floating point.
        targets (Tensor): binary target masks of shape (T, H, W), bool.
        target_index (Tensor): int64 of shape (M,): the target of each prediction.
        alpha (float): weight of positive pixels (negatives get 1 - alpha); < 0 disables it.
        gamma (float): focusing exponent, >= 0.
        chunk_pixels (int): target pixels processed at once (rounded to whole masks).

    Returns:
        (Tensor, Tensor): focal and dice losses, each of shape (M,).
    """
    if logits.dim() != 3 or targets.dim() != 3 or target_index.shape != logits.shape[:1]:
        raise ValueError(
            "sigmoid_focal_dice_loss: need logits (M, h, w), targets (T, H, W) and "
            f"target_index (M,), got {tuple(logits.shape)}, {tuple(targets.shape)} and "
            f"{tuple(target_index.shape)}"
        )
    if targets.dtype != torch.bool:
        raise ValueError(f"sigmoid_focal_dice_loss: targets must be bool, got {targets.dtype}")
    with_grad = logits.requires_grad and torch.is_grad_enabled()
    target_index = target_index.to(targets.device)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _SigmoidFocalDice.apply(
            logits, targets, target_index, alpha, gamma, chunk_pixels, with_grad
        )


def stack_target_masks(
    targets: Sequence[Dict[str, torch.Tensor]], binary: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    All target masks of the batch in one tensor, zero-padded at the bottom/right to the largest
    target size (padding is background), built once per batch and indexed by every layer.

    Args:
        targets (list[dict]): per-image ``"masks"`` of shape (N_i, H_i, W_i), bool or float.
        binary (bool): return bool masks (for the full-resolution losses); float masks must
            then hold only 0 and 1. Otherwise bool masks stay bool and others become float.

    Returns:
        (Tensor, Tensor): masks of shape (sum N_i, H, W), H and W being the largest H_i, W_i;
        int64 (B,) index of each image's first mask in them.
    """
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    masks = [_mask_dtype(t["masks"], binary) for t in targets]
    if any(m.dtype != torch.bool for m in masks):
        masks = [m.float() for m in masks]
    sizes = torch.tensor([len(m) for m in masks])
    first = torch.cumsum(sizes, 0) - sizes
    if all(m.shape[-2:] == (height, width) for m in masks):
        return (masks[0] if len(masks) == 1 else torch.cat(masks)), first
    stacked = masks[0].new_zeros((int(sizes.sum()), height, width))
    for m, start in zip(masks, first.tolist()):
        stacked[start : start + len(m), : m.shape[-2], : m.shape[-1]] = m
    return stacked, first


def _mask_dtype(masks: torch.Tensor, binary: bool) -> torch.Tensor:
    """``masks`` as bool if ``binary`` (rejecting values other than 0 and 1), else unchanged."""
    if not binary or masks.dtype == torch.bool:
        return masks
    if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(
            "SetCriterion: the full-resolution mask losses need binary target masks (0/1); "
            "use point sampling (MODEL.MASK_FORMER.TRAIN_NUM_POINTS > 0) for soft targets"
        )
    return masks != 0

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The fused full-resolution mask loss against the plain formulas: values, gradients (gradcheck and
plain autograd), the upsampling adjoint against aten, extreme logits, empty input, autocast,
what is kept for backward, and CUDA.
"""

import pytest
import torch
import torch.nn.functional as F

from mask_former.modeling.criterion import dice_loss, sigmoid_focal_loss
from mask_former.modeling.mask_losses import sigmoid_focal_dice_loss, upsample_bilinear_adjoint


def _plain(logits, targets, index, alpha=0.25, gamma=2.0):
    """Per-mask focal and dice losses from the reference formulas, through autograd."""
    up = F.interpolate(logits[:, None], targets.shape[-2:], mode="bilinear", align_corners=False)
    up, tgt = up.flatten(1), targets[index].flatten(1).to(logits)
    rows = [(up[i : i + 1], tgt[i : i + 1]) for i in range(len(index))]
    focal = [sigmoid_focal_loss(x, t, 1.0, alpha, gamma) for x, t in rows]
    dice = [dice_loss(x, t, 1.0) for x, t in rows]
    return torch.stack(focal), torch.stack(dice)


def _case(dtype, pred_size, target_size, num=5, num_targets=4, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num, *pred_size, generator=gen, dtype=dtype) * scale).requires_grad_()
    targets = torch.rand(num_targets, *target_size, generator=gen) > 0.5
    targets[1] = False  # an empty target
    targets[2] = True  # a full one
    index = torch.randint(num_targets, (num,), generator=gen)
    index[:3] = torch.tensor([1, 2, 0])
    return logits, targets, index


def _weighted_sum_grad(losses, logits, seed=1):
    """Gradient of a random weighting of both per-mask losses (exercises both backward inputs)."""
    gen = torch.Generator().manual_seed(seed)
    focal, dice = losses
    weights = torch.rand(2, len(focal), generator=gen, dtype=focal.dtype).to(focal.device)
    (grad,) = torch.autograd.grad((focal * weights[0]).sum() + (dice * weights[1]).sum(), logits)
    return grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "pred_size, target_size", [((6, 8), (24, 32)), ((5, 7), (11, 13)), ((4, 3), (12, 6))]
)
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.4, 0.0), (0.25, 1.5)])
def test_values_and_gradients_equal_plain_autograd(dtype, pred_size, target_size, alpha, gamma):
    # Integer factors (4 and 3 x 2) and non-integer ones (11 / 5 and 13 / 7); two masks per
    # chunk leave a last chunk of one.
    logits, targets, index = _case(dtype, pred_size, target_size)
    chunk_pixels = 2 * target_size[0] * target_size[1]
    fused = sigmoid_focal_dice_loss(logits, targets, index, alpha, gamma, chunk_pixels)
    plain = _plain(logits, targets, index, alpha, gamma)
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {}
    for got, expected in zip(fused, plain):
        assert got.dtype == dtype and got.shape == (5,)
        torch.testing.assert_close(got, expected, **tol)
    grad = _weighted_sum_grad(fused, logits)
    expected = _weighted_sum_grad(plain, logits)
    torch.testing.assert_close(
        grad, expected, rtol=1e-4 if dtype == torch.float32 else 1e-7, atol=0
    )


@pytest.mark.parametrize("pred_size, target_size", [((3, 4), (12, 16)), ((3, 2), (7, 5))])
def test_gradcheck(pred_size, target_size):
    logits, targets, index = _case(torch.float64, pred_size, target_size, num=3, scale=2.0)

    def losses(x):
        return sigmoid_focal_dice_loss(x, targets, index, chunk_pixels=1)

    assert torch.autograd.gradcheck(losses, (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "size, scale", [((5, 7), (4, 4)), ((6, 4), (3, 2)), ((1, 3), (4, 1)), ((3, 3), (1, 1))]
)
def test_upsample_adjoint_equals_aten_backward(size, scale, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *size, generator=gen, dtype=dtype, requires_grad=True)
    out_size = (size[0] * scale[0], size[1] * scale[1])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    up = F.interpolate(x, out_size, mode="bilinear", align_corners=False)
    grad = torch.randn(up.shape, generator=gen, dtype=dtype)
    (expected,) = torch.autograd.grad(up, x, grad)
    torch.testing.assert_close(upsample_bilinear_adjoint(grad, size), expected, **tol)
    # Non-integer factors must agree as well.
    odd_size = (out_size[0] + 1, 2 * out_size[1] + 3)
    odd = F.interpolate(x, odd_size, mode="bilinear", align_corners=False)
    grad = torch.randn(odd.shape, generator=gen, dtype=dtype)
    (expected,) = torch.autograd.grad(odd, x, grad)
    torch.testing.assert_close(upsample_bilinear_adjoint(grad, size), expected, **tol)


def test_extreme_logits_stay_finite_and_exact():
    # Logits of +-100 and +-1000: sigmoid saturates, softplus must not overflow or lose the
    # linear branch; confident wrong pixels dominate the loss.
    logits, targets, index = _case(torch.float32, (6, 8), (24, 32))
    with torch.no_grad():
        logits.copy_(torch.sign(logits) * torch.tensor([100.0, 1000.0]).repeat(24)[:48].view(6, 8))
    fused = sigmoid_focal_dice_loss(logits, targets, index)
    plain = _plain(logits, targets, index)
    for got, expected in zip(fused, plain):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grad = _weighted_sum_grad(fused, logits)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, _weighted_sum_grad(plain, logits), rtol=1e-4, atol=1e-9)


def test_no_masks_and_no_grad():
    logits = torch.zeros(0, 3, 4, requires_grad=True)
    focal, dice = sigmoid_focal_dice_loss(
        logits, torch.zeros(0, 12, 16, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    )
    assert focal.shape == dice.shape == (0,)
    (focal.sum() + dice.sum()).backward()
    assert logits.grad.shape == (0, 3, 4)

    logits, targets, index = _case(torch.float32, (6, 8), (24, 32))
    with torch.no_grad():
        focal, dice = sigmoid_focal_dice_loss(logits, targets, index)
    expected = _plain(logits.detach(), targets, index)
    torch.testing.assert_close(focal, expected[0])
    torch.testing.assert_close(dice, expected[1])


def test_autocast_keeps_float32():
    logits, targets, index = _case(torch.float32, (6, 8), (24, 32))
    expected = sigmoid_focal_dice_loss(logits, targets, index)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sigmoid_focal_dice_loss(logits, targets, index)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=1e-6, atol=0)


def test_keeps_only_prediction_sized_tensors_for_backward():
    # The point of the fused loss: autograd keeps (M, 2, h, w), never (M, H, W).
    logits, targets, index = _case(torch.float32, (6, 8), (48, 64))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        focal, dice = sigmoid_focal_dice_loss(logits, targets, index)
    assert sum(saved) <= 2 * logits.numel()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        saved.clear()
        _plain(logits, targets, index)
    assert sum(saved) > 10 * 48 * 64 * len(index)  # the plain formulas keep many such tensors


def test_rejects_bad_inputs():
    logits, targets, index = _case(torch.float32, (6, 8), (24, 32))
    with pytest.raises(ValueError, match="must be bool"):
        sigmoid_focal_dice_loss(logits, targets.float(), index)
    with pytest.raises(ValueError, match=r"target_index \(M,\)"):
        sigmoid_focal_dice_loss(logits, targets, index[:2])

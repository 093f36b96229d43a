# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Parameter groups (LR multiplier, weight decays) and gradient clipping of the optimizer."""

import math

import pytest
import torch
from torch import nn

from mask_former.engine import (
    build_optimizer,
    build_param_groups,
    get_mask_former_cfg,
    scale_lr_by_module,
    with_full_model_gradient_clipping,
)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        # A Swin-like table, named as in Swin.
        self.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))


class _Toy(nn.Module):
    """A backbone (conv, BN, Swin table), a head (linear, LayerNorm, GroupNorm), queries."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(_Block())
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.head = nn.Module()
        self.head.linear = nn.Linear(3, 4)
        self.head.ln = nn.LayerNorm(4)
        self.head.gn = nn.GroupNorm(1, 4)
        self.head.query_embed = nn.Embedding(6, 4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        # The same module reachable twice: its parameters must appear once.
        self.alias = self.head.linear


def _hyperparams_by_name(model, groups):
    names = {p: n for n, p in model.named_parameters()}
    found = {}
    for group in groups:
        for p in group["params"]:
            assert names[p] not in found, f"{names[p]} appears in two groups"
            found[names[p]] = (group["lr"], group["weight_decay"])
    return found


# The hyper-parameters of every trainable parameter of _Toy, as (learning-rate factor, weight
# decay), for a weight decay of 0.5, 0.25 for norms, 0.125 for embeddings and a backbone
# multiplier of 0.1 (HYPERPARAMS). Frozen parameters are left out, the alias is counted once.
HYPERPARAMS = dict(weight_decay=0.5, weight_decay_norm=0.25, weight_decay_embed=0.125)
EXPECTED = {
    "backbone.0.conv.weight": (0.1, 0.5),
    "backbone.0.conv.bias": (0.1, 0.5),
    "backbone.0.norm.weight": (0.1, 0.25),
    "backbone.0.norm.bias": (0.1, 0.25),
    "backbone.0.relative_position_bias_table": (0.1, 0.0),
    "backbone.absolute_pos_embed": (0.1, 0.0),
    "head.linear.weight": (1.0, 0.5),
    "head.linear.bias": (1.0, 0.5),
    "head.ln.weight": (1.0, 0.25),
    "head.ln.bias": (1.0, 0.25),
    "head.gn.weight": (1.0, 0.25),
    "head.gn.bias": (1.0, 0.25),
    "head.query_embed.weight": (1.0, 0.125),
}


def test_param_groups_lr_multiplier_and_weight_decays():
    model = _Toy()
    groups = build_param_groups(model, base_lr=1.0, backbone_multiplier=0.1, **HYPERPARAMS)
    found = _hyperparams_by_name(model, groups)
    assert found.keys() == EXPECTED.keys()  # frozen parameters left out, alias counted once
    for name, (lr, wd) in EXPECTED.items():
        assert found[name][0] == pytest.approx(lr), name
        assert found[name][1] == wd, name
    # Equal hyper-parameters share a group (6 distinct (lr, wd) pairs above).
    assert len(groups) == len(set(EXPECTED.values()))


def test_scale_lr_by_module_uses_module_path():
    model = _Toy()
    groups = [{"params": list(p for p in model.parameters() if p.requires_grad), "lr": 2.0}]
    scaled = scale_lr_by_module(groups, model, factor=lambda path: 3.0 if "head" in path else 1.0)
    found = {}
    names = {p: n for n, p in model.named_parameters()}
    for g in scaled:
        for p in g["params"]:
            found[names[p]] = g["lr"]
    assert found["head.query_embed.weight"] == 6.0
    assert found["backbone.0.conv.weight"] == 2.0
    # alias.* is head.linear: the first path reaching the parameter ("head.linear") counts.
    assert found["head.linear.weight"] == 6.0


def _cfg(**solver):
    cfg = get_mask_former_cfg()
    for key, value in solver.items():
        node = cfg.SOLVER
        *parents, last = key.split(".")
        for parent in parents:
            node = node[parent]
        node[last] = value
    return cfg


def test_build_optimizer_types_and_settings():
    model = _Toy()
    adamw = build_optimizer(_cfg(OPTIMIZER="ADAMW", BASE_LR=1e-3), model)
    assert isinstance(adamw, torch.optim.AdamW)
    sgd = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.7), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.7
    with pytest.raises(NotImplementedError, match="'ADAM'"):
        build_optimizer(_cfg(OPTIMIZER="ADAM"), model)


def _set_grads(params, values):
    for p, v in zip(params, values):
        p.grad = torch.full_like(p, v)


def test_full_model_clipping_clips_the_global_norm():
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(4))
    # Global norm sqrt(3 * 1^2 + 4 * 2^2) = sqrt(19); per-parameter norms sqrt(3) and 4.
    opt_cls = with_full_model_gradient_clipping(torch.optim.SGD, max_grad_norm=1.0)
    opt = opt_cls([{"params": [a]}, {"params": [b]}], lr=1.0)
    _set_grads([a, b], [1.0, 2.0])
    opt.step()
    scale = 1.0 / math.sqrt(19.0)
    # SGD with lr 1: the parameter moves by minus the clipped gradient.
    torch.testing.assert_close(a.detach(), torch.full((3,), -scale), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.detach(), torch.full((4,), -2 * scale), rtol=1e-4, atol=1e-6)


def _one_sgd_step_from_zero(clip_type: str, clip_value: float, grad):
    """The weight of a bias-free Linear(2, 1) at 0 after one SGD step (lr 1) with ``grad``."""
    model = nn.Linear(2, 1, bias=False)
    cfg = _cfg(
        OPTIMIZER="SGD",
        BASE_LR=1.0,
        WEIGHT_DECAY=0.0,
        MOMENTUM=0.0,
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": clip_type,
            "CLIP_GRADIENTS.CLIP_VALUE": clip_value,
        },
    )
    opt = build_optimizer(cfg, model)
    with torch.no_grad():
        model.weight.zero_()
    model.weight.grad = torch.tensor([grad])
    opt.step()
    return opt, model.weight.detach()


def test_full_model_clipping_from_config_and_small_grads_untouched():
    opt, weight = _one_sgd_step_from_zero("full_model", 10.0, [3.0, 4.0])  # norm 5 < 10
    assert "FullModelGradientClip" in type(opt).__name__
    torch.testing.assert_close(weight, torch.tensor([[-3.0, -4.0]]))


def test_detectron2_value_clipping_still_available():
    _, weight = _one_sgd_step_from_zero("value", 0.5, [3.0, -0.25])
    torch.testing.assert_close(weight, torch.tensor([[-0.5, 0.25]]))


def test_full_model_clipping_rejects_non_positive_norm():
    with pytest.raises(ValueError, match="max_grad_norm"):
        with_full_model_gradient_clipping(torch.optim.SGD, 0.0)


def _adamw_by_hand(params, targets, hyperparams, base_lr, max_norm, steps):
    """
    ``steps`` AdamW steps (betas 0.9, 0.999, eps 1e-8, decoupled weight decay) in float64 on
    the loss sum((p - t)^2), the gradients of all parameters first scaled together to a
    global L2 norm of at most ``max_norm`` (None: no clipping), written out from the
    algorithm's definition. ``hyperparams``: (lr factor, weight decay) of each parameter.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    params = [p.detach().double().clone() for p in params]
    targets = [t.double() for t in targets]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        grads = [2 * (p - t) for p, t in zip(params, targets)]
        if max_norm is not None:
            total = math.sqrt(sum(float((g * g).sum()) for g in grads))
            assert total > max_norm  # the clipping acts
            grads = [g * (max_norm / (total + 1e-6)) for g in grads]
        for i, (p, g, (factor, wd)) in enumerate(zip(params, grads, hyperparams)):
            lr = base_lr * factor
            p.mul_(1 - lr * wd)
            exp_avg[i] = beta1 * exp_avg[i] + (1 - beta1) * g
            exp_avg_sq[i] = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g
            m_hat = exp_avg[i] / (1 - beta1**step)
            v_hat = exp_avg_sq[i] / (1 - beta2**step)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params


def test_built_adamw_is_fused_and_steps_as_adamw_with_full_model_clipping():
    """
    build_optimizer's AdamW (fused kernel, merged parameter groups, full-model clipping) takes
    the steps of the algorithm written out by hand with the hyper-parameters of EXPECTED. The
    clipping norm is small enough that AdamW's epsilon makes the clipped steps differ from
    unclipped ones (AdamW is otherwise nearly blind to a common gradient scale).
    """
    torch.manual_seed(0)
    model = _Toy()
    base_lr, max_norm, steps = 0.1, 1e-6, 5
    solver = {"WEIGHT_DECAY": 0.5, "WEIGHT_DECAY_NORM": 0.25, "WEIGHT_DECAY_EMBED": 0.125}
    clip = {"ENABLED": True, "CLIP_TYPE": "full_model", "CLIP_VALUE": max_norm}
    cfg = _cfg(
        OPTIMIZER="ADAMW",
        BASE_LR=base_lr,
        BACKBONE_MULTIPLIER=0.1,
        **solver,
        **{f"CLIP_GRADIENTS.{k}": v for k, v in clip.items()},
    )
    optimizer = build_optimizer(cfg, model)
    assert all(group["fused"] for group in optimizer.param_groups)
    names = list(EXPECTED)
    params = [dict(model.named_parameters())[n] for n in names]
    targets = [torch.randn_like(p) for p in params]
    expected = _adamw_by_hand(params, targets, EXPECTED.values(), base_lr, max_norm, steps)
    unclipped = _adamw_by_hand(params, targets, EXPECTED.values(), base_lr, None, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        sum((p - t).pow(2).sum() for p, t in zip(params, targets)).backward()
        optimizer.step()
    for name, param, want, free in zip(names, params, expected, unclipped):
        torch.testing.assert_close(param.double(), want, rtol=1e-5, atol=1e-6, msg=name)
        assert (want - free).abs().max() > 1e-4, name  # the clipping changed this parameter

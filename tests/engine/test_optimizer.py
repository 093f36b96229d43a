# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Parameter groups (LR multiplier, weight decays) and gradient clipping of the optimizer."""

import copy
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


def test_param_groups_lr_multiplier_and_weight_decays():
    model = _Toy()
    groups = build_param_groups(
        model,
        base_lr=1.0,
        weight_decay=0.5,
        weight_decay_norm=0.25,
        weight_decay_embed=0.125,
        backbone_multiplier=0.1,
    )
    expected = {
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
    found = _hyperparams_by_name(model, groups)
    assert found.keys() == expected.keys()  # frozen parameters left out, alias counted once
    for name, (lr, wd) in expected.items():
        assert found[name][0] == pytest.approx(lr), name
        assert found[name][1] == wd, name
    # Equal hyper-parameters share a group (6 distinct (lr, wd) pairs above).
    assert len(groups) == len(set(expected.values()))


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


def test_full_model_clipping_from_config_and_small_grads_untouched():
    model = nn.Linear(2, 1, bias=False)
    cfg = _cfg(
        OPTIMIZER="SGD",
        BASE_LR=1.0,
        WEIGHT_DECAY=0.0,
        MOMENTUM=0.0,
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "full_model",
            "CLIP_GRADIENTS.CLIP_VALUE": 10.0,
        },
    )
    opt = build_optimizer(cfg, model)
    assert "FullModelGradientClip" in type(opt).__name__
    with torch.no_grad():
        model.weight.zero_()
    model.weight.grad = torch.tensor([[3.0, 4.0]])  # norm 5 < 10: unchanged
    opt.step()
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-3.0, -4.0]]))


def test_detectron2_value_clipping_still_available():
    model = nn.Linear(2, 1, bias=False)
    cfg = _cfg(
        OPTIMIZER="SGD",
        BASE_LR=1.0,
        WEIGHT_DECAY=0.0,
        MOMENTUM=0.0,
        **{
            "CLIP_GRADIENTS.ENABLED": True,
            "CLIP_GRADIENTS.CLIP_TYPE": "value",
            "CLIP_GRADIENTS.CLIP_VALUE": 0.5,
        },
    )
    opt = build_optimizer(cfg, model)
    with torch.no_grad():
        model.weight.zero_()
    model.weight.grad = torch.tensor([[3.0, -0.25]])
    opt.step()
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-0.5, 0.25]]))


def test_full_model_clipping_rejects_non_positive_norm():
    with pytest.raises(ValueError, match="max_grad_norm"):
        with_full_model_gradient_clipping(torch.optim.SGD, 0.0)


def test_built_adamw_is_fused_and_steps_like_the_reference_loop():
    torch.manual_seed(0)
    model = _Toy()
    reference = copy.deepcopy(model)
    reference_start = copy.deepcopy(model)
    cfg = _cfg(OPTIMIZER="ADAMW", BASE_LR=1e-2, **{"CLIP_GRADIENTS.ENABLED": False})
    fused = build_optimizer(cfg, model)
    assert all(group["fused"] for group in fused.param_groups)
    loop = build_optimizer(cfg, reference)
    for group in loop.param_groups:
        group["fused"] = False
    targets = [torch.randn_like(p) for p in model.parameters()]
    for _ in range(3):
        for net, opt in ((model, fused), (reference, loop)):
            opt.zero_grad()
            sum((p - t).pow(2).sum() for p, t in zip(net.parameters(), targets)).backward()
            opt.step()
    assert not torch.equal(model.head.linear.weight, reference_start.head.linear.weight)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

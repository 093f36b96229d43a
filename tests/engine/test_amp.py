# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Mixed precision: the built optimizer steps alike with and without a GradScaler (also when it
clips gradients), and SOLVER.AMP.CPU_PRECISION picks bfloat16 on the CPU only where it is native.
"""

import copy
import logging
from typing import List, Optional

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch import nn

from mask_former.engine import build_optimizer, get_mask_former_cfg
from mask_former.engine import trainer as trainer_module
from mask_former.engine.trainer import BFloat16Trainer, _step_trainer_class
from mask_former.utils import cpu as cpu_module

# (CLIP_TYPE, CLIP_VALUE): None = no clipping; the values are small enough to clip every step.
CLIPPINGS = [(None, 0.0), ("full_model", 0.05), ("norm", 0.05), ("value", 0.01)]


def _solver_cfg(*, optimizer: str, clip_type: Optional[str], clip_value: float):
    cfg = get_mask_former_cfg()
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip_type is not None
    if clip_type is not None:
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    return cfg


def _train(
    model: nn.Module, cfg, batches: List, scaler: Optional[torch.amp.GradScaler]
) -> nn.Module:
    """Run one optimizer step per batch, through ``scaler`` if given (as AMPTrainer does)."""
    optimizer = build_optimizer(cfg, model)
    for inputs, targets in batches:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return model


@pytest.mark.parametrize("optimizer", ["ADAMW", "SGD"])
@pytest.mark.parametrize("clip_type,clip_value", CLIPPINGS)
def test_grad_scaler_steps_like_no_scaler(optimizer, clip_type, clip_value):
    """
    3 steps through ``GradScaler`` (loss scale 2^16) give the weights of 3 plain steps: the scaler
    must unscale the gradients before any clipping sees them.
    """
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(16, 4), torch.randn(16, 3) * 10) for _ in range(3)]
    cfg = _solver_cfg(optimizer=optimizer, clip_type=clip_type, clip_value=clip_value)
    plain = _train(copy.deepcopy(start), cfg, batches, scaler=None)
    scaled = _train(
        copy.deepcopy(start), cfg, batches, scaler=torch.amp.GradScaler("cpu", init_scale=65536.0)
    )
    moved = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), start.parameters()))
    assert moved > 1e-3
    diff = max((a - b).abs().max().item() for a, b in zip(scaled.parameters(), plain.parameters()))
    assert diff <= 1e-6, f"weights differ by {diff:.3g} with a GradScaler"


def test_optimizer_keeps_the_fused_kernel_and_unscales_only_when_clipping():
    model = nn.Linear(2, 2)
    for clip_type, clip_value in CLIPPINGS:
        cfg = _solver_cfg(optimizer="ADAMW", clip_type=clip_type, clip_value=clip_value)
        opt = build_optimizer(cfg, model)
        assert all(group["fused"] for group in opt.param_groups), clip_type
        # Without clipping the fused kernel unscales by itself; with it, the scaler must.
        assert getattr(opt, "_step_supports_amp_scaling", False) == (clip_type is None), clip_type


def _amp_cfg(device: str = "cpu", precision: str = "auto"):
    cfg = get_mask_former_cfg()
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.CPU_PRECISION = precision
    return cfg


@pytest.fixture
def native_bfloat16(monkeypatch):
    """Set what the CPU detection reports: ``native_bfloat16(True)`` or ``(False)``."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(cpu_module, "cpu_supports_native_bfloat16", lambda: native)
        monkeypatch.setattr(cpu_module, "cpu_capability", lambda: "AVX512" if native else "AVX2")

    return set_native


def _warnings(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_cpu_precision_default_is_auto():
    assert get_mask_former_cfg().SOLVER.AMP.CPU_PRECISION == "auto"


def test_auto_trains_in_bfloat16_where_the_cpu_has_it(native_bfloat16, caplog):
    native_bfloat16(True)
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        assert _step_trainer_class(_amp_cfg()) is BFloat16Trainer
    assert _warnings(caplog) == []


def test_auto_falls_back_to_float32_with_one_warning(native_bfloat16, caplog):
    native_bfloat16(False)
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        assert _step_trainer_class(_amp_cfg()) is SimpleTrainer
    (message,) = _warnings(caplog)
    assert "AVX2" in message and "native bfloat16" in message
    assert "SOLVER.AMP.CPU_PRECISION bfloat16" in message and "float32" in message


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_forces_either_dtype(native_bfloat16, caplog, native):
    native_bfloat16(native)
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        assert _step_trainer_class(_amp_cfg(precision="bfloat16")) is BFloat16Trainer
        assert _step_trainer_class(_amp_cfg(precision="float32")) is SimpleTrainer
    assert _warnings(caplog) == []


def test_invalid_cpu_precision_names_the_key_and_value():
    with pytest.raises(ValueError, match=r"SOLVER.AMP.CPU_PRECISION = 'fp16'"):
        _step_trainer_class(_amp_cfg(precision="fp16"))


@pytest.mark.parametrize("native", [True, False])
def test_cuda_amp_is_unchanged(native_bfloat16, native):
    native_bfloat16(native)
    for precision in ("auto", "bfloat16", "float32"):
        assert _step_trainer_class(_amp_cfg("cuda", precision)) is AMPTrainer
    cfg = _amp_cfg("cpu", "bfloat16")
    cfg.SOLVER.AMP.ENABLED = False
    assert _step_trainer_class(cfg) is SimpleTrainer


def test_cpu_detection_answers_a_bool():
    assert isinstance(cpu_module.cpu_supports_native_bfloat16(), bool)
    assert isinstance(cpu_module.cpu_capability(), str) and cpu_module.cpu_capability()


class _TinyTrainer(trainer_module.Trainer):
    """Trainer on a one-convolution model and a one-batch loader: only construction is tested."""

    @classmethod
    def build_model(cls, cfg):
        return nn.Conv2d(3, 4, 3)

    @classmethod
    def build_train_loader(cls, cfg):
        return [[{"image": torch.zeros(3, 8, 8)}]]


@pytest.mark.parametrize("native", [True, False])
def test_trainer_uses_nhwc_weights_only_for_bfloat16(native_bfloat16, tmp_path, native):
    native_bfloat16(native)
    cfg = _amp_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = ()
    trainer = _TinyTrainer(cfg)
    assert type(trainer._trainer) is (BFloat16Trainer if native else SimpleTrainer)
    weight = trainer.model.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == native

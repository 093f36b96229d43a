# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""``Trainer``: detectron2's DefaultTrainer with MaskFormer's data, optimizer and evaluation."""

import logging
import os
import time
import weakref
from collections import OrderedDict
from typing import Collection, Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import TrainingCheckpointer
from ..utils import cpu as cpu_utils
from .evaluation import build_evaluator
from .optimizer import build_optimizer
from .tta import SemanticSegmentorWithTTA

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _ddp_kwargs(model: nn.Module) -> Dict:
    # detectron2 0.6 passes device_ids=[local rank] unconditionally, which DistributedDataParallel
    # rejects for a CPU model; CPU models are wrapped with device_ids=None.
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return {"device_ids": None} if on_cpu else {}


class BFloat16Trainer(SimpleTrainer):
    """
    Mixed precision on the CPU (SOLVER.AMP.ENABLED with a CPU model, where
    SOLVER.AMP.CPU_PRECISION resolves to bfloat16): the forward pass runs under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, so convolutions and matrix products use
    bfloat16 while parameters, gradients and the optimizer stay in float32; matching and losses
    are computed in float32 (see SetCriterion). bfloat16 has float32's exponent range, so unlike
    detectron2's (CUDA, float16) AMPTrainer no loss scaling is needed.
    """

    def run_step(self) -> None:
        assert self.model.training, "[BFloat16Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


_CPU_PRECISIONS = ("auto", "bfloat16", "float32")


def _cpu_precision(cfg: CfgNode) -> str:
    """
    The dtype ("bfloat16" or "float32") of CPU mixed precision, from SOLVER.AMP.CPU_PRECISION:
    "auto" picks bfloat16 only where the CPU computes it natively, and warns otherwise.
    """
    choice = cfg.SOLVER.AMP.CPU_PRECISION
    if choice != "auto":
        return choice
    if cpu_utils.cpu_supports_native_bfloat16():
        return "bfloat16"
    logger.warning(
        "SOLVER.AMP.ENABLED: this CPU (PyTorch capability %s) has no native bfloat16, which would "
        "make training about 12x slower than float32; training in float32 instead. Set "
        "SOLVER.AMP.CPU_PRECISION bfloat16 to force bfloat16.",
        cpu_utils.cpu_capability(),
    )
    return "float32"


def _step_trainer_class(cfg: CfgNode) -> type:
    """
    The per-iteration trainer: float32, CUDA float16 AMP, or on the CPU bfloat16 AMP where
    SOLVER.AMP.CPU_PRECISION (see :func:`_cpu_precision`) resolves to bfloat16.
    """
    choice = cfg.SOLVER.AMP.CPU_PRECISION
    if choice not in _CPU_PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.CPU_PRECISION = {choice!r}: expected one of {', '.join(_CPU_PRECISIONS)}"
        )
    device = str(cfg.MODEL.DEVICE)
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer
    if device.startswith("cuda"):
        return AMPTrainer
    if device == "cpu":
        return BFloat16Trainer if _cpu_precision(cfg) == "bfloat16" else SimpleTrainer
    raise ValueError(
        f"SOLVER.AMP.ENABLED=True: no mixed precision for MODEL.DEVICE {device!r} "
        "(float16 on 'cuda', bfloat16 on 'cpu')"
    )


class Trainer(DefaultTrainer):
    """
    DefaultTrainer for MaskFormer: the train loader uses the mapper named by
    INPUT.DATASET_MAPPER_NAME, the optimizer is :func:`mask_former.engine.build_optimizer`, the LR
    scheduler comes from DeepLab (WarmupPolyLR), evaluators follow the dataset's
    ``evaluator_type``, and test-time augmentation is semantic multi-scale + flip. Training also
    runs on the CPU, in one or several (gloo) processes. Checkpoints hold the optimizer state too,
    and ``resume_or_load`` also resumes output directories of the original MaskFormer (see
    :class:`mask_former.checkpoint.TrainingCheckpointer`).
    """

    def __init__(self, cfg: CfgNode):
        # The construction order is DefaultTrainer's; only the DDP wrapping differs (see
        # _ddp_kwargs), which DefaultTrainer.__init__ does not let a subclass change.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        trainer_cls = _step_trainer_class(cfg)
        if trainer_cls is BFloat16Trainer:
            # oneDNN's bfloat16 convolutions are fastest on NHWC weights (and activations).
            model = model.to(memory_format=torch.channels_last)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, **_ddp_kwargs(model))
        self._trainer = trainer_cls(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self) -> Optional[Dict]:
        """
        Train from ``start_iter`` to SOLVER.MAX_ITER; returns the results of the last evaluation
        (the one that ends training), or None if no evaluation ran.
        """
        super().train()
        return getattr(self, "_last_eval_results", None)

    def state_dict(self) -> Dict:
        """
        The iteration and hook (LR scheduler) states, and under "_trainer" those of the
        per-iteration trainer: optimizer and, with CUDA AMP, the grad scaler (detectron2 0.6 saves
        no optimizer state; later versions use this layout).
        """
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state: Dict) -> None:
        """Load :meth:`state_dict`; the parts it lacks (older checkpoints) are left as they are."""
        super().load_state_dict(state)
        inner = state.get("_trainer", {})
        if "optimizer" in inner:
            self.optimizer.load_state_dict(inner["optimizer"])
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and "grad_scaler" in inner:
            scaler.load_state_dict(inner["grad_scaler"])

    @classmethod
    def build_evaluator(
        cls,
        cfg: CfgNode,
        dataset_name: str,
        output_folder: str = None,
        tasks: Optional[Collection[str]] = None,
    ) -> DatasetEvaluator:
        """:func:`mask_former.engine.build_evaluator`; ``tasks``: evaluate only these outputs."""
        return build_evaluator(cfg, dataset_name, output_folder, tasks=tasks)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from ..data import build_train_mapper  # the data package registers datasets on import

        # None: detectron2's DatasetMapper(cfg, is_train=True).
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> "OrderedDict[str, Dict]":
        """
        Evaluate ``model`` with semantic test-time augmentation (TEST.AUG); only semantic
        evaluators run, and the result keys get the suffix "_TTA".
        """
        logger.info("running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [  # the TTA model returns only "sem_seg"
            cls.build_evaluator(cfg, name, output_folder=output_folder, tasks=("sem_seg",))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())

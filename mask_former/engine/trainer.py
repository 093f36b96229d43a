# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``Trainer``: detectron2's DefaultTrainer with MaskFormer's data, optimizer and evaluation, and a
``--resume`` that continues an interrupted run exactly (see :class:`Trainer`).
"""

import logging
import os
import random
import time
import weakref
from collections import OrderedDict
from typing import Any, Collection, Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    TensorboardXWriter,
)
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint.metadata import dataset_metadata
from ..checkpoint.resume import (
    ResumeState,
    TrainingCheckpointer,
    fit_training_state,
    follow_scheduler,
)
from ..checkpoint.weights import load_model_weights
from ..data.samplers import ResumableTrainingSampler, aspect_ratio_groups
from ..utils import cpu as cpu_utils
from .evaluation import build_evaluator
from .optimizer import build_optimizer
from .time_budget import AdjustableLengthLoop, TimeBudget
from .tta import SemanticSegmentorWithTTA
from .writers import CheckpointAlignedWriter, MetricsJSONWriter

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


# Resuming exactly ------------------------------------------------------------------------------


def _rng_state() -> Dict:
    """The states of Python's, NumPy's and torch's global random generators (CUDA's if used)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # As a tensor and numbers: torch.load(weights_only=True) reads those, not numpy arrays.
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    """Restore :func:`_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Enough history for the median smoothing of the writers (window 20).
_HISTORY_KEPT = 20


def _history_tail(storage: Optional[EventStorage]) -> Dict[str, List[List[float]]]:
    """The last values of each scalar of ``storage``, as [value, iteration] pairs."""
    if storage is None:
        return {}
    return {
        name: [[value, itr] for value, itr in buffer.values()[-_HISTORY_KEPT:]]
        for name, buffer in storage.histories().items()
    }


def _find_resumable_sampler(loader: Any) -> Optional[ResumableTrainingSampler]:
    """The sampler of a loader built by detectron2's ``build_batch_data_loader``, if resumable."""
    for _ in range(4):  # DataLoader -> ToIterableDataset, or grouping -> DataLoader -> ...
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, ResumableTrainingSampler):
            return sampler
        loader = getattr(loader, "dataset", None)
    return None


def _seed_loaders_apart(loader: Any, seed: int) -> None:
    """
    Give the torch DataLoaders of ``loader`` a generator of their own (``seed``) for their
    workers' base seed. A DataLoader draws it from torch's global generator when its iterator is
    made, and with aspect-ratio grouping that happens at the first batch: in a resumed run, after
    the random states are restored, where the uninterrupted run drew it at iteration 0.
    """
    for _ in range(4):
        if isinstance(loader, torch.utils.data.DataLoader):
            loader.generator = torch.Generator().manual_seed(seed)
        loader = getattr(loader, "dataset", None)


def _train_sampler(cfg: CfgNode, dataset: List[dict]) -> Optional[ResumableTrainingSampler]:
    """The resumable form of DATALOADER.SAMPLER_TRAIN "TrainingSampler"; None for the others."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        return None
    groups = aspect_ratio_groups(dataset) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    return ResumableTrainingSampler(
        len(dataset),
        batch_size=cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
        # With grouping, records reach the batcher in stream order, with workers or not.
        num_workers=0 if cfg.DATALOADER.ASPECT_RATIO_GROUPING else cfg.DATALOADER.NUM_WORKERS,
        aspect_groups=groups,
    )


class Trainer(DefaultTrainer, AdjustableLengthLoop):
    """
    DefaultTrainer for MaskFormer: the train loader uses the mapper named by
    INPUT.DATASET_MAPPER_NAME, the optimizer is :func:`mask_former.engine.build_optimizer`, the LR
    scheduler comes from DeepLab (WarmupPolyLR), evaluators follow the dataset's
    ``evaluator_type``, and test-time augmentation is semantic multi-scale + flip. Training also
    runs on the CPU, in one or several (gloo) processes. Checkpoints hold the optimizer state too,
    and ``resume_or_load`` also resumes output directories of the original MaskFormer: the
    checkpointer returns the saved training state fitted to this run as a plain
    :class:`mask_former.checkpoint.ResumeState`, which ``resume_or_load`` applies.

    Interruption: checkpoints also hold the random states (Python, NumPy, torch, CUDA) and the
    seed of the data order. ``resume_or_load(resume=True)`` continues the sampler's stream after
    the checkpoint's iteration (:class:`mask_former.data.samplers.ResumableTrainingSampler`),
    restores the random states, and cuts ``metrics.json`` back to the checkpoint's iteration
    (:class:`mask_former.engine.writers.MetricsJSONWriter`). The checkpoint hook runs after the
    evaluation and metric writing of its iteration, so that a checkpoint is written only once
    all of its iteration's results are on disk. In one process with DATALOADER.NUM_WORKERS 0,
    a run killed and resumed any number of times ends with the weights of an uninterrupted run,
    bit for bit, if the aspect-ratio buckets are empty at each checkpoint it resumes from (no
    grouping, or images of one orientation); otherwise the batches are the same, but their
    augmentations are drawn from other random states.
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
            # Float32 training stays NCHW although NHWC is 2.6% faster there (main job under
            # ONEDNN_MAX_CPU_ISA=AVX2: 334 vs 342 ms per step): at initialisation its float32
            # gradients differ from NCHW's by up to 1% (relative norm; sums with heavy
            # cancellation, reduced in another order), and its two main-job runs scored PQ 54.6
            # and 54.2, the NCHW runs of the same code 55.2 and 56.5 (README, "The main job").
            model = model.to(memory_format=torch.channels_last)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, **_ddp_kwargs(model))
        self._trainer = trainer_cls(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # The trainer is the checkpointable "trainer" for saving (state_dict) only: resuming goes
        # through TrainingCheckpointer.resume and _apply_resume_state.
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        # The class names travel with the weights (mask_former.checkpoint.metadata).
        self.checkpointer.metadata = dataset_metadata(next(iter(cfg.DATASETS.TRAIN), None))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        # Resumed recent values of each scalar, for the EventStorage that train() opens.
        self._history_to_restore: Dict[str, List[List[float]]] = {}
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self) -> Optional[Dict]:
        """
        Train from ``start_iter`` to SOLVER.MAX_ITER (or fewer iterations, chosen by the time
        budget of SOLVER.TIME_BUDGET_MINUTES); returns the results of the last evaluation (the one
        that ends training), or None if no evaluation ran.
        """
        super().train()
        return getattr(self, "_last_eval_results", None)

    def state_dict(self) -> Dict:
        """
        The iteration and hook (LR scheduler) states, and under "_trainer" those of the
        per-iteration trainer: optimizer and, with CUDA AMP, the grad scaler (detectron2 0.6 saves
        no optimizer state; later versions use this layout); "rng": the random states; "data":
        the seed of the training sampler; "storage": the recent values of each logged scalar (so
        that smoothed metrics continue as they would have).
        """
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        state["rng"] = _rng_state()
        state["storage"] = _history_tail(getattr(self, "storage", None))
        sampler = _find_resumable_sampler(self._trainer.data_loader)
        if sampler is not None:
            state["data"] = {"sampler_seed": sampler.seed}
        return state

    def load_state_dict(self, state: Dict) -> None:
        """
        Continue from ``state`` (as :meth:`state_dict` returns it) as :meth:`resume_or_load` does
        from a checkpoint's training state: fitted to this optimizer and scheduler
        (:func:`mask_former.checkpoint.fit_training_state`), then applied by
        :meth:`_apply_resume_state`. The weights are not part of it.
        """
        model = self.checkpointer.model  # without the DDP wrapper, as a checkpoint's keys
        fitted = fit_training_state(
            state, "the trainer state", model, self.optimizer, self.scheduler
        )
        self._apply_resume_state(fitted)

    def resume_or_load(self, resume: bool = True) -> None:
        """
        With ``resume`` and a complete checkpoint in OUTPUT_DIR: its weights and training state
        (see :meth:`mask_former.checkpoint.TrainingCheckpointer.resume`), applied by
        :meth:`_apply_resume_state`; otherwise the weights of MODEL.WEIGHTS, from iteration 0
        (:func:`mask_former.checkpoint.load_model_weights` with fine-tuning rules: a partial
        load is logged as "loaded N of M parameters from FILE"; one that fits nothing raises).
        With ``resume``, ``metrics.json`` loses the lines of the iterations that run again.
        """
        try:
            state = self.checkpointer.resume(self.optimizer, self.scheduler) if resume else None
            self._history_to_restore = {}
            if state is None:
                model = self.checkpointer.model
                load_model_weights(model, self.cfg.MODEL.WEIGHTS, for_training=True)
            else:
                self._apply_resume_state(state)
        except BaseException:
            # detectron2 starts the loader's workers in __init__: stop them before the error
            # ends the run, or they die on a broken pipe after its one-line message.
            self._trainer._data_loader_iter = None
            raise
        if resume:
            for writer in getattr(self, "_metrics_writers", []):
                if isinstance(writer, MetricsJSONWriter):
                    writer.resume(self.start_iter)

    def _apply_resume_state(self, state: ResumeState) -> None:
        """
        Continue after ``state.iteration``: hook (LR scheduler), optimizer and grad-scaler states,
        learning rates, the data order and the random states; the recent values of each scalar
        go into the EventStorage, which exists only once training starts (:meth:`before_train`).
        """
        TrainerBase.load_state_dict(self, {"iteration": state.iteration, "hooks": state.hooks})
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler is not None and state.grad_scaler is not None:
            scaler.load_state_dict(state.grad_scaler)
        if state.lr_from_scheduler:
            follow_scheduler(self.optimizer, self.scheduler)
        self.start_iter = self.iter + 1
        self._continue_data_and_randomness(state)
        self._history_to_restore = state.history

    def _continue_data_and_randomness(self, state: ResumeState) -> None:
        sampler = _find_resumable_sampler(self._trainer.data_loader)
        if sampler is None:
            logger.warning("The train loader's sampler cannot resume: it starts its stream again")
        else:
            if self.cfg.DATALOADER.ASPECT_RATIO_GROUPING and sampler.aspect_groups is None:
                logger.warning(
                    "DATALOADER.ASPECT_RATIO_GROUPING: the training records lack width/height, "
                    "so the resumed stream skips iterations x batch size records: near, but not "
                    "exactly, where grouped batching was"
                )
            sampler.resume(self.start_iter, state.sampler_seed)
            # A new iterator (and workers) reads the sampler's new position; it draws no random
            # number from the states restored below.
            _seed_loaders_apart(self._trainer.data_loader, sampler.seed + self.start_iter)
            self._trainer._data_loader_iter = iter(self._trainer.data_loader)
        if state.rng is None:
            logger.warning("The checkpoint holds no random states: they are not restored")
        elif comm.get_world_size() > 1:
            logger.info("Random states are restored in a single-process run only")
        else:
            _set_rng_state(state.rng)

    def before_train(self) -> None:
        """Put the resumed recent values of each scalar into the new EventStorage (once)."""
        history, self._history_to_restore = self._history_to_restore, {}
        for name, values in history.items():
            for value, itr in values:
                self.storage.histories()[name].update(value, itr)
        super().before_train()

    def build_hooks(self) -> List[hooks.HookBase]:
        """
        DefaultTrainer's hooks, with the checkpointer moved last and a writer that also writes at
        every checkpoint: a checkpoint is saved after its iteration's evaluation and metrics. With
        SOLVER.TIME_BUDGET_MINUTES, :class:`mask_former.engine.time_budget.TimeBudget` comes first.
        """
        built = super().build_hooks()
        writers = [h for h in built if isinstance(h, hooks.PeriodicWriter)]
        checkpointers = [h for h in built if isinstance(h, hooks.PeriodicCheckpointer)]
        built = [h for h in built if h not in writers and h not in checkpointers]
        budget = self.cfg.SOLVER.TIME_BUDGET_MINUTES
        if budget < 0:
            raise ValueError(f"SOLVER.TIME_BUDGET_MINUTES must be >= 0 (0: off), got {budget}")
        if budget > 0:
            built.insert(0, TimeBudget(budget))
        self._metrics_writers: List[EventWriter] = []
        for writer in writers:
            aligned = CheckpointAlignedWriter(
                writer._writers, writer._period, self.cfg.SOLVER.CHECKPOINT_PERIOD
            )
            self._metrics_writers += aligned.writers
            built.append(aligned)
        return built + checkpointers

    def build_writers(self) -> List[EventWriter]:
        """detectron2's default writers, with :class:`MetricsJSONWriter` for metrics.json."""
        output_dir = self.cfg.OUTPUT_DIR
        os.makedirs(output_dir, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            MetricsJSONWriter(os.path.join(output_dir, "metrics.json")),
            TensorboardXWriter(output_dir),
        ]

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
        """
        detectron2's train loader with the mapper of INPUT.DATASET_MAPPER_NAME and, for
        DATALOADER.SAMPLER_TRAIN "TrainingSampler", its resumable form (same stream).
        """
        from ..data import build_train_mapper  # the data package registers datasets on import

        mapper = build_train_mapper(cfg)  # None: detectron2's DatasetMapper(cfg, is_train=True)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        return build_detection_train_loader(
            cfg, mapper=mapper, dataset=dataset, sampler=_train_sampler(cfg, dataset)
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """
        detectron2's test loader with :class:`~mask_former.data.MaskFormerTestDatasetMapper`:
        detectron2's evaluation input, but an unreadable image or label map is an error naming
        the file, and the model's classes are checked against the dataset's.
        """
        from ..data import MaskFormerTestDatasetMapper

        mapper = MaskFormerTestDatasetMapper(cfg, dataset_name=dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

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

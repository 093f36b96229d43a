# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Resuming training, also from output directories of the original MaskFormer.

The original MaskFormer's optimizer had one parameter group per parameter; this project's merges
them into few groups. :meth:`TrainingCheckpointer.resume` loads the weights of the last complete
checkpoint and returns its training state as a :class:`ResumeState`: plain data, fitted to the
optimizer and LR scheduler of this run, which :meth:`mask_former.engine.Trainer.resume_or_load`
applies in one place. The checkpointer never calls into the trainer to load; the trainer is its
checkpointable "trainer" only so that ``save`` writes ``trainer.state_dict()``.

The saved layout (``Trainer.state_dict``): ``{"iteration", "hooks": {"LRScheduler": ...},
"_trainer": {"iteration", "optimizer", "grad_scaler" (CUDA AMP)}, "rng", "data":
{"sampler_seed"}, "storage"}``; detectron2 <= 0.5 saved "optimizer", "scheduler" and "iteration"
at the top level (read too, see :func:`nest_legacy_training_state`).
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from .files import AtomicCheckpointer

__all__ = [
    "ResumeState",
    "TrainingCheckpointer",
    "fit_training_state",
    "nest_legacy_training_state",
    "saved_parameter_order",
    "regroup_optimizer_state",
    "fit_scheduler_state",
    "follow_scheduler",
]

logger = logging.getLogger(__name__)

# The detectron2 hook whose state is the LR scheduler's.
_SCHEDULER_HOOK = "LRScheduler"


def nest_legacy_training_state(checkpoint: Dict) -> None:
    """
    Move, in place, the training state of a detectron2 <= 0.5 checkpoint (top-level
    "optimizer", "scheduler" and "iteration") to the layout of later versions:
    ``{"trainer": {"iteration", "hooks": {"LRScheduler": ...}, "_trainer": {"optimizer": ...}}}``.
    Other checkpoints are left alone.
    """
    if "trainer" in checkpoint or not {"optimizer", "scheduler"} & checkpoint.keys():
        return
    iteration = checkpoint.get("iteration", -1)
    trainer = {"iteration": iteration}
    if "scheduler" in checkpoint:
        trainer["hooks"] = {_SCHEDULER_HOOK: checkpoint.pop("scheduler")}
    if "optimizer" in checkpoint:
        trainer["_trainer"] = {"iteration": iteration, "optimizer": checkpoint.pop("optimizer")}
    checkpoint["trainer"] = trainer


def saved_parameter_order(state_dict_keys: Iterable[str], model: nn.Module) -> List[str]:
    """
    Names of ``model``'s trainable parameters in the order of an optimizer with one group per
    parameter, as the original MaskFormer built it: modules in ``named_modules()`` order, the
    trainable parameters of each, each parameter once. A saved model state dict lists its
    entries in the same module order, so its keys (``state_dict_keys``) give that order for the
    model that was saved, even if this one declares its modules in another order.
    """
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    names, seen = [], set()
    for key in state_dict_keys:
        key = key[len("module.") :] if key.startswith("module.") else key
        param = trainable.get(key)
        if param is not None and param not in seen:
            seen.add(param)
            names.append(key)
    return names


def regroup_optimizer_state(
    saved: Dict, optimizer: torch.optim.Optimizer, model: nn.Module, param_names: List[str]
) -> Dict:
    """
    Re-key an optimizer state dict saved with other parameter groups onto ``optimizer``'s.

    Args:
        saved: the saved state dict: "state" keyed by parameter index and "param_groups"
            whose "params" list those indices.
        optimizer: the optimizer to load into; its groups' hyper-parameters are kept.
        model: the model whose parameters ``optimizer`` holds.
        param_names: the names (as in ``model.named_parameters()``) of the saved parameters,
            in the order of the saved groups' "params".
    Returns:
        a state dict for ``optimizer.load_state_dict``.
    Raises:
        ValueError: the saved state cannot be mapped safely (other parameters or shapes).
    """
    named = dict(model.named_parameters())
    saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(saved_ids) != len(param_names):
        raise ValueError(
            f"it holds {len(saved_ids)} parameters, the model {len(param_names)} trainable ones "
            "named in the same file"
        )
    # optimizer.state_dict() numbers the parameters in the order of its groups.
    index = {p: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    if set(index) != {named[name] for name in param_names}:
        raise ValueError("its parameters are not those of this optimizer")
    state = {}
    for saved_id, name in zip(saved_ids, param_names):
        entry = saved["state"].get(saved_id)
        if entry is None:
            continue  # a parameter without state yet
        shape = named[name].shape
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != shape:
                raise ValueError(
                    f"its {key!r} of parameter {saved_id} has shape {tuple(value.shape)}, "
                    f"but that parameter is {name} of shape {tuple(shape)}"
                )
        state[index[named[name]]] = entry
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def fit_scheduler_state(saved: Dict, scheduler: Any) -> bool:
    """
    If ``saved`` (an LR scheduler state dict) has one base LR per group of another optimizer
    grouping, replace, in place, its per-group lists by ``scheduler``'s; the iteration stays.
    Returns whether it did.
    """
    base_lrs = saved.get("base_lrs")
    if base_lrs is None or len(base_lrs) == len(scheduler.base_lrs):
        return False
    saved["base_lrs"] = list(scheduler.base_lrs)
    saved.pop("_last_lr", None)
    return True


def follow_scheduler(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """
    Set the learning rate of every group of ``optimizer`` to ``scheduler``'s at its current
    iteration (detectron2's schedulers compute it from ``base_lrs`` and ``last_epoch`` alone).
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler._LRScheduler):
        return
    for group, lr in zip(optimizer.param_groups, scheduler.get_lr()):
        group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@dataclass
class ResumeState:
    """
    The training state of a checkpoint, fitted to the optimizer and LR scheduler of this run:
    what :meth:`mask_former.engine.Trainer.resume_or_load` applies.

    Attributes:
        path: the checkpoint file.
        iteration: the last iteration the checkpoint's run finished.
        hooks: the states of stateful hooks (the LR scheduler's), by hook class name.
        optimizer: a state dict for ``optimizer.load_state_dict``; None: it starts fresh.
        lr_from_scheduler: whether the learning rates must then follow the scheduler
            (:func:`follow_scheduler`): the optimizer state was not loaded as saved.
        grad_scaler: the CUDA AMP grad scaler's state, if saved.
        rng: the random states (Python, NumPy, torch, CUDA), if saved.
        sampler_seed: the seed of the training sampler's stream, if saved.
        history: the recent values of each logged scalar, as [value, iteration] pairs.
    """

    path: str
    iteration: int
    hooks: Dict[str, Dict] = field(default_factory=dict)
    optimizer: Optional[Dict] = None
    lr_from_scheduler: bool = True
    grad_scaler: Optional[Dict] = None
    rng: Optional[Dict] = None
    sampler_seed: Optional[int] = None
    history: Dict[str, List[List[float]]] = field(default_factory=dict)


def _fit_optimizer_state(
    saved: Optional[Dict], optimizer: torch.optim.Optimizer, model: nn.Module, file_keys: List[str]
) -> Optional[Dict]:
    """
    ``saved`` (an optimizer state dict) made loadable into ``optimizer``: as saved if its groups
    are the optimizer's, re-keyed if it has one group per parameter, otherwise None (with a
    warning). ``file_keys``: the model keys of the file, in their saved order.
    """
    if saved is None:
        return None
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] == [len(g["params"]) for g in optimizer.param_groups]:
        return saved
    if any(len(g["params"]) != 1 for g in groups):
        raise ValueError(
            f"its {len(groups)} groups are neither this optimizer's groups "
            "nor one group per parameter"
        )
    names = saved_parameter_order(file_keys, model)
    return regroup_optimizer_state(saved, optimizer, model, names)


def _optimizer_for_resume(
    inner: Dict, path: str, optimizer: torch.optim.Optimizer, model: nn.Module, keys: List[str]
) -> Optional[Dict]:
    """The saved optimizer state of ``inner`` ("_trainer") fitted, or None; logs what it did."""
    saved = inner.get("optimizer")
    if saved is None:
        logger.warning("%s holds no optimizer state: the optimizer starts fresh", path)
        return None
    try:
        fitted = _fit_optimizer_state(saved, optimizer, model, keys)
    except ValueError as e:
        logger.warning(
            "%s: the optimizer starts fresh, as its saved state does not fit: %s", path, e
        )
        return None
    if fitted is not saved:
        logger.info(
            "%s: optimizer state of one group per parameter (%d groups) mapped onto the %d "
            "groups of this optimizer; hyper-parameters from the config",
            path,
            len(saved["param_groups"]),
            len(optimizer.param_groups),
        )
    return fitted


def fit_training_state(
    saved: Dict,
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    file_keys: Iterable[str] = (),
) -> ResumeState:
    """
    The :class:`ResumeState` of a checkpoint's "trainer" entry (current layout; see
    :func:`nest_legacy_training_state`), fitted to ``optimizer`` and ``scheduler``:

    * a saved optimizer state of one group per parameter is re-keyed onto the optimizer's groups
      (:func:`regroup_optimizer_state`, in the parameter order of ``file_keys``, the file's model
      keys); if that cannot be done safely, or the file holds no optimizer state (detectron2 0.6
      saved none), the optimizer starts fresh, with a warning;
    * a scheduler state with one base LR per parameter gets the scheduler's base LRs
      (:func:`fit_scheduler_state`) and keeps its iteration;
    * unless the optimizer state is loaded as saved, the learning rates are to follow the
      scheduler (``lr_from_scheduler``): hyper-parameters come from the config.

    ``saved`` is modified in place. Parts it lacks (older checkpoints) are left None or empty.
    """
    inner = saved.get("_trainer", {})
    fitted = _optimizer_for_resume(inner, path, optimizer, model, list(file_keys))
    hooks = dict(saved.get("hooks", {}))
    scheduler_state = hooks.get(_SCHEDULER_HOOK)
    if scheduler_state is not None and fit_scheduler_state(scheduler_state, scheduler):
        logger.info("%s: LR scheduler of another parameter grouping; base LRs from config", path)
    return ResumeState(
        path=path,
        iteration=saved.get("iteration", 0),
        hooks=hooks,
        optimizer=fitted,
        lr_from_scheduler=fitted is None or fitted is not inner.get("optimizer"),
        grad_scaler=inner.get("grad_scaler"),
        rng=saved.get("rng"),
        sampler_seed=saved.get("data", {}).get("sampler_seed"),
        history=saved.get("storage", {}),
    )


class TrainingCheckpointer(AtomicCheckpointer):
    """
    The checkpointer of :class:`mask_former.engine.Trainer`: atomic files (see
    :class:`~mask_former.checkpoint.files.AtomicCheckpointer`), and :meth:`resume`, which also
    resumes output directories of the original MaskFormer (see :func:`fit_training_state`).

    A checkpointable "trainer" (the trainer) is saved, never loaded: :meth:`load` loads the model
    and the other checkpointables and returns the training state with the other extra data, in
    the current layout (a detectron2 <= 0.5 layout is nested, see
    :func:`nest_legacy_training_state`).
    """

    # Model state-dict keys of the file being loaded, in their saved order.
    _file_keys: List[str] = []

    def _load_file(self, filename: str) -> Dict:
        checkpoint = super()._load_file(filename)
        weights = checkpoint.get("model")
        # The file's parameter order, read before the weights are loaded (and popped).
        self._file_keys = list(weights) if isinstance(weights, dict) else []
        return checkpoint

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict:
        """fvcore's ``load``, but the "trainer" entry is returned, not loaded (see above)."""
        wanted = self.checkpointables if checkpointables is None else checkpointables
        self._file_keys = []
        checkpoint = super().load(path, checkpointables=[k for k in wanted if k != "trainer"])
        nest_legacy_training_state(checkpoint)
        return checkpoint

    def resume(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> Optional[ResumeState]:
        """
        Load the weights of the last complete checkpoint of ``save_dir`` (see
        :meth:`get_checkpoint_file`) and return its training state fitted to ``optimizer`` and
        ``scheduler`` (:func:`fit_training_state`); None, loading nothing, if there is none.
        """
        path = self.get_checkpoint_file()
        if not path:
            return None
        checkpoint = self.load(path)
        saved = checkpoint.get("trainer")
        if saved is None:
            logger.warning("%s holds no training state: only its weights are resumed", path)
            saved = {}
        self.logger.info("Loading trainer from %s ...", path)
        return fit_training_state(saved, path, self.model, optimizer, scheduler, self._file_keys)

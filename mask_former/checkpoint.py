# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checkpoint upgrades: model key layouts, and training states saved with other optimizer groups.

The official MaskFormer model-zoo files store the pixel-decoder weights directly under the head
(``sem_seg_head.layer_4.weight``); the current layout nests them under ``pixel_decoder.``
(``sem_seg_head.pixel_decoder.layer_4.weight``). A head registers
:func:`upgrade_pixel_decoder_layout` as a load-state-dict pre-hook
(:func:`register_pixel_decoder_upgrade`), which applies the one upgrade rule while
``load_state_dict`` (and so ``DetectionCheckpointer``) loads a file. The rule is idempotent: keys
already in the current layout are left alone.

The original MaskFormer's optimizer had one parameter group per parameter; this project's
merges them into few groups. :class:`TrainingCheckpointer` resumes training from either.

Checkpoint safety lives in :mod:`mask_former.safe_loading`; importing this module imports it,
which makes every ``DetectionCheckpointer`` read files without running code from them. Its
public names are re-exported here.

Interruption. :class:`TrainingCheckpointer` writes each checkpoint and ``last_checkpoint`` to a
temporary file renamed over the destination, so a killed run leaves the previous ones intact; on
resume, a ``last_checkpoint`` naming a missing or partial file is not trusted (the newest complete
checkpoint is used), and temporary files of killed writes are removed.
"""

import logging
import os
import zipfile
from typing import Any, Dict, Iterable, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .safe_loading import (
    TRUST_ENV,
    UntrustedCheckpointError,
    checkpoints_trusted,
    install_safe_loading,
    load_checkpoint_file,
    restricted_pickle_load,
)
from .utils.atomic_io import atomic_write, remove_stale_temporaries

__all__ = [
    "TRUST_ENV",
    "UntrustedCheckpointError",
    "checkpoints_trusted",
    "restricted_pickle_load",
    "load_checkpoint_file",
    "install_safe_loading",
    "PIXEL_DECODER_LAYOUT_VERSION",
    "upgrade_pixel_decoder_keys",
    "upgrade_pixel_decoder_layout",
    "register_pixel_decoder_upgrade",
    "TrainingCheckpointer",
    "is_partial_checkpoint",
    "nest_legacy_training_state",
    "saved_parameter_order",
    "regroup_optimizer_state",
    "fit_scheduler_state",
    "follow_scheduler",
]

logger = logging.getLogger(__name__)


# Pixel-decoder key layout --------------------------------------------------------------------

# First components of the head's keys that are already in the current layout.
_CURRENT_LAYOUT_CHILDREN = ("predictor", "pixel_decoder")


def upgrade_pixel_decoder_keys(state_dict: Dict, prefix: str) -> List[str]:
    """
    Rename, in place, every key ``<prefix>X`` whose X does not start with ``predictor.`` or
    ``pixel_decoder.`` to ``<prefix>pixel_decoder.X``.

    Args:
        state_dict: the state dict being loaded (modified in place).
        prefix: the head's prefix, e.g. "sem_seg_head.".
    Returns:
        the old names of the renamed keys.
    """
    renamed = []
    for key in list(state_dict.keys()):
        if not key.startswith(prefix):
            continue
        first = key[len(prefix) :].split(".", 1)[0]
        if first in _CURRENT_LAYOUT_CHILDREN:
            continue
        new_key = f"{prefix}pixel_decoder.{key[len(prefix) :]}"
        if new_key in state_dict:
            raise KeyError(
                f"checkpoint holds both {key!r} (old layout) and {new_key!r} (current layout)"
            )
        state_dict[new_key] = state_dict.pop(key)
        renamed.append(key)
    return renamed


# The ``_version`` of a head in the current layout, saved by ``state_dict()`` in the metadata of
# the head's prefix; a state dict without it (model-zoo .pkl files) or with an earlier one is in
# the old layout.
PIXEL_DECODER_LAYOUT_VERSION = 2


def upgrade_pixel_decoder_layout(
    module: nn.Module,
    state_dict: Dict,
    prefix: str,
    local_metadata: Dict,
    strict: bool,
    missing_keys: List[str],
    unexpected_keys: List[str],
    error_msgs: List[str],
) -> None:
    """
    Load-state-dict pre-hook of heads holding ``pixel_decoder`` and ``predictor`` (see
    :func:`register_pixel_decoder_upgrade`): a state dict saved before
    :data:`PIXEL_DECODER_LAYOUT_VERSION` (or without version information, like model-zoo .pkl
    files) is upgraded with :func:`upgrade_pixel_decoder_keys` before ``module`` loads it; the
    head sets ``_version = PIXEL_DECODER_LAYOUT_VERSION`` so that its own state dicts say so.

    Args:
        module: the head.
        state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs:
            as in ``nn.Module._load_from_state_dict``; ``local_metadata["version"]`` is the
            saved ``_version`` of the head.
    """
    version = local_metadata.get("version", None)
    if version is not None and version >= PIXEL_DECODER_LAYOUT_VERSION:
        return
    renamed = upgrade_pixel_decoder_keys(state_dict, prefix)
    if renamed:
        logger.warning(
            "Checkpoint uses the old layout of %s: %d pixel-decoder keys moved under "
            "'%spixel_decoder.' (e.g. %s).",
            type(module).__name__,
            len(renamed),
            prefix,
            renamed[0],
        )


def register_pixel_decoder_upgrade(head: nn.Module) -> Any:
    """
    Register :func:`upgrade_pixel_decoder_layout` as a load-state-dict pre-hook of ``head``.

    Returns:
        the ``RemovableHandle`` of the hook.
    """
    register = getattr(head, "register_load_state_dict_pre_hook", None)  # public in torch >= 2.5
    if register is not None:
        return register(upgrade_pixel_decoder_layout)
    # Before torch 2.5 the same registration was only available under its private name.
    return head._register_load_state_dict_pre_hook(upgrade_pixel_decoder_layout, with_module=True)


# Resuming training ---------------------------------------------------------------------------


def is_partial_checkpoint(path: str) -> bool:
    """
    Whether ``path`` is empty or unreadable, or a ``torch.save`` zip archive without its end
    (the central directory, written last) or its "data.pkl": an interrupted write. Files of the
    legacy (non-zip) format are not judged here: unpickling one cut short fails by itself.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True
    if head != b"PK\x03\x04":
        return not head
    try:
        with zipfile.ZipFile(path) as archive:
            return not any(n.split("/")[-1] == "data.pkl" for n in archive.namelist())
    except zipfile.BadZipFile:
        return True


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


class TrainingCheckpointer(DetectionCheckpointer):
    """
    The checkpointer of :class:`mask_former.engine.Trainer` (checkpointable "trainer"), which
    also resumes output directories of the original MaskFormer. Its optimizer had one parameter
    group per parameter, where this project's merges them into few groups. On resume:

    * a detectron2 <= 0.5 layout is read too (see :func:`nest_legacy_training_state`);
    * a saved optimizer state of one group per parameter is re-keyed onto the trainer's groups
      (:func:`regroup_optimizer_state`); if that cannot be done safely, or the file holds no
      optimizer state (detectron2 0.6 saved none), the optimizer starts fresh, with a warning;
    * a scheduler state with one base LR per parameter gets the trainer's base LRs
      (:func:`fit_scheduler_state`) and keeps its iteration;
    * unless the optimizer state was loaded as saved, the learning rates then follow the
      scheduler (:func:`follow_scheduler`): hyper-parameters come from the config.

    Checkpoints and ``last_checkpoint`` are written atomically (temporary file, then rename), and
    resuming trusts ``last_checkpoint`` only if it names a complete file (see
    :meth:`get_checkpoint_file`).
    """

    # Model state-dict keys of the file being loaded, in their saved order.
    _file_keys: List[str] = []

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save`` (model, checkpointables, ``kwargs``), written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_write(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically: it names the old or the new file, never half."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def get_all_checkpoint_files(self) -> List[str]:
        """The .pth files of ``save_dir``, without temporary files of unfinished writes."""
        files = super().get_all_checkpoint_files()
        return [p for p in files if not os.path.basename(p).startswith(".")]

    def has_checkpoint(self) -> bool:
        """Whether there is a complete checkpoint to resume from (see get_checkpoint_file)."""
        return bool(self.get_checkpoint_file())

    def get_checkpoint_file(self) -> str:
        """
        The file ``last_checkpoint`` names if it is complete; otherwise (a file written by a
        non-atomic writer and cut short, or deleted) the newest complete checkpoint, with a
        warning; "" if there is none. Temporary files of killed writes are removed first.
        """
        if not os.path.isfile(os.path.join(self.save_dir, "last_checkpoint")):
            return ""
        if self.save_to_disk:
            for stale in remove_stale_temporaries(os.path.join(self.save_dir, "*.pth")):
                logger.warning("Removed %s, left by a checkpoint write that was killed", stale)
        named = super().get_checkpoint_file()
        if os.path.isfile(named) and not is_partial_checkpoint(named):
            return named
        complete = [p for p in self.get_all_checkpoint_files() if not is_partial_checkpoint(p)]
        fallback = max(complete, key=os.path.getmtime, default="")
        logger.warning(
            "last_checkpoint in %s names %s, which is missing or incomplete: using %s",
            self.save_dir,
            os.path.basename(named) or "nothing",
            fallback or "no checkpoint",
        )
        return fallback

    def _load_file(self, filename: str) -> Dict:
        checkpoint = super()._load_file(filename)
        weights = checkpoint.get("model")
        # The file's parameter order, read before the weights are loaded (and popped).
        self._file_keys = list(weights) if isinstance(weights, dict) else []
        return checkpoint

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict:
        wanted = list(self.checkpointables if checkpointables is None else checkpointables)
        self._file_keys = []
        checkpoint = super().load(path, checkpointables=[])  # the model only
        if "trainer" in wanted:
            nest_legacy_training_state(checkpoint)
        for key in wanted:
            if key not in checkpoint:
                continue
            self.logger.info("Loading %s from %s ...", key, path)
            if key == "trainer":
                self._load_trainer(checkpoint.pop(key), path)
            else:
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _load_trainer(self, state: Dict, path: str) -> None:
        trainer = self.checkpointables["trainer"]
        as_saved = self._fit_optimizer_state(state, trainer.optimizer, path)
        scheduler_state = state.get("hooks", {}).get(_SCHEDULER_HOOK)
        if scheduler_state is not None and fit_scheduler_state(scheduler_state, trainer.scheduler):
            logger.info(
                "%s: LR scheduler of another parameter grouping; base LRs from config", path
            )
        trainer.load_state_dict(state)
        if not as_saved:
            follow_scheduler(trainer.optimizer, trainer.scheduler)

    def _fit_optimizer_state(
        self, state: Dict, optimizer: torch.optim.Optimizer, path: str
    ) -> bool:
        """Make the saved optimizer state loadable; returns whether it is loaded as saved."""
        inner = state.get("_trainer", {})
        saved = inner.get("optimizer")
        if saved is None:
            logger.warning("%s holds no optimizer state: the optimizer starts fresh", path)
            return False
        groups = saved["param_groups"]
        if [len(g["params"]) for g in groups] == [len(g["params"]) for g in optimizer.param_groups]:
            return True
        try:
            if any(len(g["params"]) != 1 for g in groups):
                raise ValueError(
                    f"its {len(groups)} groups are neither this optimizer's groups "
                    "nor one group per parameter"
                )
            names = saved_parameter_order(self._file_keys, self.model)
            inner["optimizer"] = regroup_optimizer_state(saved, optimizer, self.model, names)
        except ValueError as e:
            logger.warning(
                "%s: the optimizer starts fresh, as its saved state does not fit: %s", path, e
            )
            del inner["optimizer"]
            return False
        logger.info(
            "%s: optimizer state of one group per parameter (%d groups) mapped onto the %d "
            "groups of this optimizer; hyper-parameters from the config",
            path,
            len(groups),
            len(optimizer.param_groups),
        )
        return False

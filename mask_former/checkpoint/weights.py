# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Loading MODEL.WEIGHTS into a model, and checking that they fit it.

:func:`load_model_weights` is the one way the project's entry points (the Predictor and the demo,
``train_net.py``, the tools) load MODEL.WEIGHTS. It reads the file as detectron2's
``DetectionCheckpointer`` does (safely, see :mod:`mask_former.safe_loading`; c2 key renaming,
"model" nesting, the upgrade hooks of :mod:`mask_former.modeling.checkpoint_layout`), then
counts what was actually loaded, from the incompatible keys that fvcore's ``_load_model``
reports (missing keys, unexpected keys, and the tensors of another shape that it drops):

* for inference, weights that leave a parameter or buffer of the model without a value, or have
  another shape, raise :class:`WeightsMismatchError`, unless ``allow_partial``
  (MODEL.ALLOW_PARTIAL_WEIGHTS);
* for training, partial loads are fine-tuning as usual (an ImageNet backbone leaves the head
  random): one line "loaded N of M parameters from FILE" is logged, and only a checkpoint that
  fits nothing raises;
* an empty path loads nothing: a warning says that the weights are random (for inference).
"""

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

from ..safe_loading import CheckpointError, load_checkpoint_file
from .metadata import checkpoint_metadata

__all__ = ["LoadedWeights", "WeightsMismatchError", "load_model_weights", "RANDOM_WEIGHTS_WARNING"]

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "MODEL.WEIGHTS is empty: the model runs with randomly initialised weights, "
    "its predictions mean nothing"
)
# How many names of missing or mismatched parameters a message lists.
_NAMES_SHOWN = 3
# Buffers that need no value from a checkpoint: BatchNorm's counter changes no output, and
# detectron2 sets the pixel normalisation from the config (it ignores their absence too).
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_NAMES = ("pixel_mean", "pixel_std")


class WeightsMismatchError(CheckpointError):
    """Weights that do not fit the model (missing parameters or other shapes)."""


@dataclasses.dataclass
class LoadedWeights:
    """
    What :func:`load_model_weights` loaded.

    Attributes:
        path: the checkpoint as given.
        loaded: how many of the model's parameters and buffers got a value.
        total: how many parameters and buffers of the model's state dict need one (all but
            BatchNorm's ``num_batches_tracked`` and the config's ``pixel_mean``/``pixel_std``).
        missing: the names of those that the checkpoint lacks.
        unexpected: the names in the checkpoint that the model does not have.
        mismatched: (name, shape in the checkpoint, shape in the model) of those not loaded
            because their shapes differ.
        metadata: the class metadata saved with the weights (see
            :func:`mask_former.checkpoint.metadata.checkpoint_metadata`); empty if none.
    """

    path: str
    loaded: int
    total: int
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
    metadata: Dict[str, Any]

    @property
    def complete(self) -> bool:
        """Whether every parameter and buffer of the model got a value of its shape."""
        return not self.missing and not self.mismatched


def _local_file(path: str) -> str:
    """``path`` on the local disk (detectron2:// and URLs downloaded, as fvcore does)."""
    if os.path.isfile(path):
        return path
    try:
        return PathManager.get_local_path(path)
    except Exception as e:  # a download or an unknown protocol: the reason in one line
        lines = str(e).strip().splitlines()
        raise CheckpointError(path, f"cannot fetch it ({lines[0] if lines else e!r})") from e


def _load_into(model: nn.Module, path: str) -> Tuple[Any, Dict]:
    """Load the file ``path`` into ``model``: (fvcore's incompatible keys, the other entries)."""
    checkpoint = load_checkpoint_file(_local_file(path))
    if not isinstance(checkpoint.get("model"), dict):
        kind = type(checkpoint.get("model")).__name__
        raise CheckpointError(path, f"not a checkpoint (holds a {kind}, not a dict of weights)")
    checkpointer = DetectionCheckpointer(model)
    try:
        incompatible = checkpointer._load_model(checkpoint)
    except ValueError as e:  # fvcore: "Unsupported type found in checkpoint! KEY: TYPE"
        raise CheckpointError(path, f"not a checkpoint of weights ({e})") from e
    except RuntimeError as e:  # load_state_dict: shapes of keys renamed by an upgrade hook
        first = str(e).strip().splitlines()[-1].strip()
        raise WeightsMismatchError(path, f"its weights do not fit the model ({first})") from e
    checkpointer._log_incompatible_keys(incompatible)
    return incompatible, checkpoint


def _needs_value(name: str) -> bool:
    """Whether a state-dict entry must come from the checkpoint (see _IGNORED_*)."""
    return name not in _IGNORED_NAMES and not name.endswith(_IGNORED_SUFFIXES)


def _fit(model: nn.Module, path: str, incompatible: Any, checkpoint: Dict) -> LoadedWeights:
    total = sum(_needs_value(k) for k in model.state_dict())
    mismatched = [(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes]
    shapes = {k for k, _, _ in mismatched}
    missing = [k for k in incompatible.missing_keys if k not in shapes and _needs_value(k)]
    loaded = total - len(missing) - sum(_needs_value(k) for k in shapes)
    metadata = checkpoint_metadata(checkpoint)
    unexpected = list(incompatible.unexpected_keys)
    return LoadedWeights(path, loaded, total, missing, unexpected, mismatched, metadata)


def _mismatch_reason(fit: LoadedWeights) -> str:
    parts = []
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing")
    if fit.mismatched:
        parts.append(f"{len(fit.mismatched)} of another shape")
    names = (fit.missing + [k for k, _, _ in fit.mismatched])[:_NAMES_SHOWN]
    return (
        f"it fits {fit.loaded} of the model's {fit.total} parameters and buffers, "
        f"{' and '.join(parts)} (first: {', '.join(names)}); "
        "MODEL.ALLOW_PARTIAL_WEIGHTS True loads it anyway"
    )


def load_model_weights(
    model: nn.Module,
    path: Optional[str],
    *,
    allow_partial: bool = False,
    for_training: bool = False,
) -> Optional[LoadedWeights]:
    """
    Load the checkpoint ``path`` into ``model`` (a DDP wrapper is looked through) and check
    that it fits (see the module docstring).

    Args:
        path: a .pth/.pkl/.pyth file, detectron2:// path or URL; None or "": load nothing.
        allow_partial: let weights that do not fill the whole model load (MODEL.
            ALLOW_PARTIAL_WEIGHTS); a warning names what is left random.
        for_training: fine-tuning rules: partial loads allowed, logged in one line; a
            checkpoint that fits no parameter at all still raises.

    Returns:
        what was loaded, or None for an empty path.

    Raises:
        CheckpointError: the file is missing, unreadable or not a checkpoint.
        WeightsMismatchError: the weights do not fit (see above).
        mask_former.checkpoint.UntrustedCheckpointError: the file needs more than plain data.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not path:
        if for_training:
            logger.info("MODEL.WEIGHTS is empty: training starts from random weights")
        else:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        return None
    incompatible, checkpoint = _load_into(model, path)
    fit = _fit(model, path, incompatible, checkpoint)
    if fit.loaded == 0:
        raise WeightsMismatchError(
            path, f"it fits none of the model's {fit.total} parameters and buffers"
        )
    if for_training:
        logger.info("loaded %d of %d parameters from %s", fit.loaded, fit.total, path)
    elif not fit.complete:
        if not allow_partial:
            raise WeightsMismatchError(path, _mismatch_reason(fit))
        logger.warning(
            "Partial load (MODEL.ALLOW_PARTIAL_WEIGHTS): loaded %d of %d parameters from %s; "
            "the others keep their random initial values",
            fit.loaded,
            fit.total,
            path,
        )
    return fit

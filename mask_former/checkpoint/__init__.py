# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checkpoints, each job in its own module:

* :mod:`mask_former.checkpoint.files`: checkpoint files that survive interruption (atomic
  writes, ``last_checkpoint`` trusted only if it names a complete file);
* :mod:`mask_former.checkpoint.resume`: resuming training, also from output directories of the
  original MaskFormer, through a plain :class:`ResumeState`;
* :mod:`mask_former.checkpoint.weights`: loading MODEL.WEIGHTS for inference or training, and
  checking that they fit the model (:func:`load_model_weights`);
* :mod:`mask_former.checkpoint.metadata`: the class names saved inside checkpoints;
* :mod:`mask_former.modeling.checkpoint_layout`: the pixel-decoder key layout of the heads and the
  upgrade of model-zoo files on load;
* :mod:`mask_former.safe_loading`: reading checkpoint files without running code from them
  (``import mask_former`` installs it into ``DetectionCheckpointer``).

The public names of all six are importable from here.
"""

from ..modeling.checkpoint_layout import (
    PIXEL_DECODER_LAYOUT_VERSION,
    register_pixel_decoder_upgrade,
    upgrade_pixel_decoder_keys,
    upgrade_pixel_decoder_layout,
)
from ..safe_loading import (
    TRUST_ENV,
    CheckpointError,
    UntrustedCheckpointError,
    checkpoints_trusted,
    install_safe_loading,
    load_checkpoint_file,
    restricted_pickle_load,
)
from .files import AtomicCheckpointer, is_partial_checkpoint
from .metadata import METADATA_KEY, checkpoint_metadata, dataset_metadata
from .resume import (
    ResumeState,
    TrainingCheckpointer,
    fit_scheduler_state,
    fit_training_state,
    follow_scheduler,
    nest_legacy_training_state,
    regroup_optimizer_state,
    saved_parameter_order,
)
from .weights import LoadedWeights, WeightsMismatchError, load_model_weights

__all__ = [
    "TRUST_ENV",
    "CheckpointError",
    "WeightsMismatchError",
    "LoadedWeights",
    "load_model_weights",
    "METADATA_KEY",
    "checkpoint_metadata",
    "dataset_metadata",
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
    "AtomicCheckpointer",
    "ResumeState",
    "fit_training_state",
]

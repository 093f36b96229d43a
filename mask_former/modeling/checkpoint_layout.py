# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The pixel-decoder key layout of the heads, and the upgrade of the model-zoo layout on load.

The official MaskFormer model-zoo files store the pixel-decoder weights directly under the head
(``sem_seg_head.layer_4.weight``); the current layout nests them under ``pixel_decoder.``
(``sem_seg_head.pixel_decoder.layer_4.weight``). A head registers
:func:`upgrade_pixel_decoder_layout` as a load-state-dict pre-hook
(:func:`register_pixel_decoder_upgrade`), which applies the one upgrade rule while
``load_state_dict`` (and so ``DetectionCheckpointer``) loads a file. The rule is idempotent: keys
already in the current layout are left alone.

This module depends on torch alone, so that the heads need nothing of training resume; its names
are also importable from :mod:`mask_former.checkpoint`.
"""

import logging
from typing import Any, Dict, List

from torch import nn

__all__ = [
    "PIXEL_DECODER_LAYOUT_VERSION",
    "upgrade_pixel_decoder_keys",
    "upgrade_pixel_decoder_layout",
    "register_pixel_decoder_upgrade",
]

logger = logging.getLogger(__name__)

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

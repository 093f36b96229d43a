# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checkpoint key-layout upgrades.

The official MaskFormer model-zoo files store the pixel-decoder weights directly under the head
(``sem_seg_head.layer_4.weight``); the current layout nests them under ``pixel_decoder.``
(``sem_seg_head.pixel_decoder.layer_4.weight``). :class:`PixelDecoderLayoutUpgrade` gives a head
the one upgrade rule, applied while ``load_state_dict`` (and so ``DetectionCheckpointer``) loads
a file. The rule is idempotent: keys already in the current layout are left alone.
"""

import logging
from typing import Dict, List

from torch import nn

__all__ = ["upgrade_pixel_decoder_keys", "PixelDecoderLayoutUpgrade"]

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


class PixelDecoderLayoutUpgrade(nn.Module):
    """
    Mixin for heads holding ``pixel_decoder`` and ``predictor``: state dicts saved before
    version 2 (or without version information, like model-zoo .pkl files) are upgraded with
    :func:`upgrade_pixel_decoder_keys` before loading.
    """

    _version = 2

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            renamed = upgrade_pixel_decoder_keys(state_dict, prefix)
            if renamed:
                logger.warning(
                    "Checkpoint uses the old layout of %s: %d pixel-decoder keys moved under "
                    "'%spixel_decoder.' (e.g. %s).",
                    type(self).__name__,
                    len(renamed),
                    prefix,
                    renamed[0],
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

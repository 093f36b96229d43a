#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Convert an ImageNet ResNet checkpoint of torchvision into Detectron2's model-zoo format.

Usage:
    python tools/convert-torchvision-to-d2.py resnet101.pth R-101.pkl

The output is a pickle of ``{"model": {name: numpy array}, "__author__": "torchvision",
"matching_heuristics": True}`` with names in the layout of Detectron2's ResNet
(``stem.conv1``, ``res2.0.conv1.norm``, ``res3.0.shortcut``, ...). Detectron2's checkpointer
then finds them under ``backbone.`` by suffix matching. Models that load it must use
torchvision's conventions: ``MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]``,
``MODEL.PIXEL_STD [58.395, 57.120, 57.375]``, ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and
``INPUT.FORMAT "RGB"`` (the model-zoo configs of this project do).

The ImageNet classifier (``fc.*``) has no counterpart in a backbone and is left out; every
key that is not converted is listed at the end.
"""

import argparse
import pickle
import re
import sys
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from mask_former.utils import atomic_write

# torchvision name pieces -> Detectron2 name pieces, applied in this order to the part of a key
# after its stage prefix.
_PIECE_RULES = (
    (re.compile(r"^downsample\.0\."), "shortcut."),
    (re.compile(r"^downsample\.1\."), "shortcut.norm."),
    (re.compile(r"^bn(\d)\."), r"conv\1.norm."),
)
_STAGE_KEY = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")
# The ImageNet classification head: not part of a backbone.
_CLASSIFIER_KEY = re.compile(r"^fc\.")


def convert_key(key: str) -> Optional[str]:
    """
    Return the Detectron2 name of one torchvision ResNet state-dict key, or None when the key
    has no Detectron2 counterpart.

    ``conv1.weight`` -> ``stem.conv1.weight``; ``bn1.*`` -> ``stem.conv1.norm.*``;
    ``layer{N}.{j}.bn{k}.*`` -> ``res{N+1}.{j}.conv{k}.norm.*``;
    ``layer{N}.{j}.downsample.{0,1}.*`` -> ``res{N+1}.{j}.shortcut[.norm].*``.
    """
    if _CLASSIFIER_KEY.match(key):
        return None
    stage = _STAGE_KEY.match(key)
    if stage is None:
        prefix, rest = "stem.", key
    else:
        prefix, rest = f"res{int(stage.group(1)) + 1}.{stage.group(2)}.", stage.group(3)
    for pattern, replacement in _PIECE_RULES:
        rest = pattern.sub(replacement, rest)
    return prefix + rest


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """
    Rename a torchvision ResNet state dict to Detectron2's layout.

    Returns:
        (converted, skipped): the renamed weights as numpy arrays, and the original names of
        the keys that were left out.
    """
    converted: Dict[str, np.ndarray] = {}
    skipped: List[str] = []
    for key, value in state_dict.items():
        new_key = convert_key(key)
        if new_key is None:
            skipped.append(key)
            continue
        if new_key in converted:
            raise ValueError(f"Two checkpoint keys map to {new_key!r} (the second is {key!r})")
        converted[new_key] = value.detach().cpu().numpy()
    return converted, skipped


def load_torchvision_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Load a torchvision checkpoint: a plain state dict, or one under "state_dict"/"model"."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable or foreign files
        raise ValueError(f"Cannot read a PyTorch checkpoint from {path}: {e}") from e
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper_key), dict):
            obj = obj[wrapper_key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if "conv1.weight" not in obj or not any(k.startswith("layer1.") for k in obj):
        raise ValueError(
            f"{path} does not look like a torchvision ResNet: expected keys 'conv1.weight' and "
            f"'layer1.*', found {sorted(obj)[:5]}..."
        )
    return obj


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)

    converted, skipped = convert_state_dict(load_torchvision_state_dict(args.input))
    result = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    with atomic_write(args.output) as f:
        pickle.dump(result, f)
    print(f"Wrote {len(converted)} weights to {args.output}")
    if skipped:
        print("Not converted (no counterpart in a Detectron2 backbone):", ", ".join(skipped))


if __name__ == "__main__":
    main(sys.argv[1:])

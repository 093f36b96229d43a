#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Convert an ImageNet Swin Transformer checkpoint of the official Swin release into Detectron2's
model-zoo format.

Usage:
    python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth \
        swin_tiny_patch4_window7_224.pkl

The backbone ``D2SwinTransformer`` uses the parameter names of the release
(``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``), so the weights
are kept as they are: the output is a pickle of ``{"model": <the release's "model" dict>,
"__author__": "third_party", "matching_heuristics": True}``, and Detectron2's checkpointer
finds each weight under ``backbone.`` by suffix matching. Weights the backbone does not have
(the classifier ``head.*``, the final ``norm.*``, cached ``attn_mask`` buffers) are reported by
the checkpointer as unused when the model loads the file.
"""

import argparse
import pickle
import sys
from typing import Dict, List, Optional

import torch

from mask_former.utils import atomic_write


def load_swin_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """
    Return the weights of a Swin release checkpoint (its "model" entry, or the file itself
    when it is a plain state dict).

    Args:
        path (str): the .pth file.
        trust_pickle (bool): also accept files that store arbitrary Python objects (some
            training checkpoints store their config); only for files from a trusted source.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises several types for unreadable or foreign files
        hint = "" if trust_pickle else " (if it stores Python objects, add --trust-pickle)"
        raise ValueError(f"Cannot read a PyTorch checkpoint from {path}{hint}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if not any(k.startswith("patch_embed.") for k in obj):
        raise ValueError(
            f"{path} does not look like a Swin Transformer checkpoint: no 'patch_embed.*' key "
            f"(found {sorted(obj)[:5]}...)"
        )
    return obj


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="Swin release checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load the input with full unpickling (only for trusted files)",
    )
    args = parser.parse_args(argv)

    weights = load_swin_state_dict(args.input, args.trust_pickle)
    result = {"model": weights, "__author__": "third_party", "matching_heuristics": True}
    with atomic_write(args.output) as f:
        pickle.dump(result, f)
    print(f"Wrote {len(weights)} weights to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])

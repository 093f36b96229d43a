#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
How far inference in another precision is from float32 on a trained model: the share of
semantic pixels whose class (argmax) is the same, over a folder of images.

Usage (the main job's model on shapes val; PQ and mIoU come from ``train_net.py --eval-only``
with ``MODEL.MASK_FORMER.TEST.PRECISION auto``):
    .venv/bin/python dev/precision_agreement.py \
        --config-file configs/shapes/maskformer_panoptic_R18_main.yaml \
        --weights output/main_job_s1/model_final.pth --images datasets/shapes/images/val
"""

import argparse
import json

from mask_former import Predictor
from mask_former.modeling.precision import inference_autocast_dtype
from mask_former.utils.cpu import cpu_capability


def _identical(a: list, b: list) -> float:
    """The share of pixels with the same class in two lists of (H, W) label maps."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / max(sum(x.numel() for x in a), 1)


def agreement(config: str, weights: str, images: str, precision: str) -> dict:
    """
    Identical semantic pixels of ``precision`` against float32 over the folder's images (batch
    4), and of ``precision`` in batches of 4 against one image per call (batch independence).
    """
    results = {}
    for name, batch_size in (("float32", 4), (precision, 4), (precision, 1)):
        predictor = Predictor(config, weights, device="cpu", precision=name, batch_size=batch_size)
        found = predictor.predict_dir(images, progress=False)
        results[name, batch_size] = [p.semantic for p in found]
    dtype = inference_autocast_dtype(precision, "cpu")
    return {
        "precision": precision,
        "ran_as": "float32" if dtype is None else str(dtype).replace("torch.", ""),
        "cpu_capability": cpu_capability(),
        "images": len(results["float32", 4]),
        "identical_pixels_vs_float32": _identical(results["float32", 4], results[precision, 4]),
        "identical_pixels_batch_4_vs_1": _identical(results[precision, 4], results[precision, 1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", required=True, help="a folder of images")
    parser.add_argument("--precision", default="auto", help="compared with float32")
    args = parser.parse_args()
    result = agreement(args.config_file, args.weights, args.images, args.precision)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

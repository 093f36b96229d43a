# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The entry points run model-zoo configs (MODEL.DEVICE "cuda") on machines without CUDA."""

import torch
from detectron2.config import get_cfg

from mask_former.utils import fall_back_to_cpu


def test_cuda_falls_back_to_cpu_only_without_cuda():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda:0"
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert fall_back_to_cpu(cfg).MODEL.DEVICE == expected
    cfg.MODEL.DEVICE = "cpu"
    assert fall_back_to_cpu(cfg).MODEL.DEVICE == "cpu"

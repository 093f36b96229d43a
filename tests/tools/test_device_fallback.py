# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The entry points run model-zoo configs (MODEL.DEVICE "cuda") on machines without CUDA. Both
branches are tested on every machine: CUDA's presence is monkeypatched, and nothing here
touches a GPU.
"""

import logging

import pytest
import torch
from detectron2.config import get_cfg

from mask_former.utils import fall_back_to_cpu


@pytest.mark.parametrize("cuda", [True, False], ids=["with_cuda", "without_cuda"])
def test_cuda_falls_back_to_cpu_only_without_cuda(monkeypatch, caplog, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda:1"
    # On the module's logger itself: detectron2's setup_logger may stop "mask_former" from
    # propagating to the root logger, where caplog listens.
    logger = logging.getLogger("mask_former.utils.device")
    logger.addHandler(caplog.handler)
    try:
        assert fall_back_to_cpu(cfg) is cfg
    finally:
        logger.removeHandler(caplog.handler)
    assert cfg.MODEL.DEVICE == ("cuda:1" if cuda else "cpu")
    warned = "MODEL.DEVICE is 'cuda:1' but CUDA is not available: using the CPU."
    assert (warned in caplog.text) is not cuda
    cfg.MODEL.DEVICE = "cpu"  # the CPU stays the CPU either way
    assert fall_back_to_cpu(cfg).MODEL.DEVICE == "cpu"

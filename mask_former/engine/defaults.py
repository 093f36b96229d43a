# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""``setup``: the config of a ``train_net.py`` run, from its command-line arguments."""

import argparse
import logging

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_mask_former_config

__all__ = ["get_mask_former_cfg", "setup"]

logger = logging.getLogger(__name__)


def get_mask_former_cfg() -> CfgNode:
    """detectron2's default config with the DeepLab and MaskFormer keys added."""
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_mask_former_config(cfg)
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """
    Build the frozen config of ``args.config_file`` and the trailing ``args.opts``, then set up
    detectron2 (output folder, config dump, loggers, seed) and the "mask_former" logger.
    A CUDA MODEL.DEVICE on a machine without CUDA falls back to the CPU, with a warning.
    """
    cfg = get_mask_former_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cuda_missing = str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available()
    if cuda_missing:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask_former")
    if cuda_missing:
        logging.getLogger("mask_former").warning("CUDA is not available: MODEL.DEVICE set to cpu")
    return cfg

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""``setup``: the config of a ``train_net.py`` run, from its command-line arguments."""

import argparse
import importlib.util
import os
import sys

import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..utils.device import fall_back_to_cpu

__all__ = ["build_cfg", "runs_on_cpu", "setup", "default_setup"]


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """
    The (unfrozen) config of ``args.config_file`` and the trailing ``args.opts``
    (:func:`mask_former.config.load_config`, the device fallback left to :func:`setup`).
    """
    return load_config(args.config_file or None, args.opts, cpu_fallback=False, freeze=False)


def runs_on_cpu(args: argparse.Namespace) -> bool:
    """
    Whether the run of ``args`` uses the CPU (MODEL.DEVICE "cpu", or no CUDA): its processes
    must then be launched over gloo, even on a machine that has GPUs.
    """
    return build_cfg(args).MODEL.DEVICE == "cpu" or not torch.cuda.is_available()


def _has_compiled_detectron2() -> bool:
    # mask_former.d2_compat's stand-in for a missing detectron2._C has no origin (file).
    try:
        spec = importlib.util.find_spec("detectron2._C")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def _version_at(module) -> str:
    return f"{getattr(module, '__version__', 'unknown')} @{os.path.dirname(module.__file__)}"


def _basic_environment_info() -> str:
    """The rows of detectron2's ``collect_env_info`` needing neither compiled ops nor CUDA_HOME."""
    import cv2
    import detectron2
    import fvcore
    import iopath
    import numpy as np
    import PIL
    import torchvision
    from tabulate import tabulate

    compiled = _has_compiled_detectron2()
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", "")),
        ("numpy", np.__version__),
        ("detectron2", _version_at(detectron2)),
        ("detectron2._C", "compiled" if compiled else "not installed (compiled ops unavailable)"),
        ("PyTorch", _version_at(torch)),
        ("PyTorch debug build", torch.version.debug),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU available", "Yes"))
        for k in range(torch.cuda.device_count()):
            cap = ".".join(str(x) for x in torch.cuda.get_device_capability(k))
            rows.append((f"GPU {k}", f"{torch.cuda.get_device_name(k)} (arch={cap})"))
    else:
        rows.append(("GPU available", "No: torch.cuda.is_available() == False"))
    rows += [
        ("Pillow", PIL.__version__),
        ("torchvision", _version_at(torchvision)),
        ("fvcore", fvcore.__version__),
        ("iopath", iopath.__version__),
        ("cv2", cv2.__version__),
    ]
    return tabulate(rows) + "\n" + torch.__config__.show()


def _environment_info() -> str:
    """
    The environment table logged at the start of a run. detectron2's ``collect_env_info`` is used
    where it works and stays quiet: a compiled detectron2 on a machine with CUDA. Elsewhere it
    fails (detectron2 0.6 asks compiled ops for their compiler and CUDA versions) or, by importing
    ``torch.utils.cpp_extension`` to read CUDA_HOME, makes torch log "No CUDA runtime is found,
    using CUDA_HOME=..." on a machine without CUDA although CUDA_HOME is then never reported; the
    same table is built here without those parts (:func:`_basic_environment_info`).
    """
    if torch.cuda.is_available() and _has_compiled_detectron2():
        try:
            return collect_env_info()
        except RuntimeError as e:
            return f"(not collected: {e})\n{_basic_environment_info()}"
    return _basic_environment_info()


def default_setup(cfg: CfgNode, args: argparse.Namespace) -> None:
    """
    What detectron2's ``default_setup`` does, also with a pure-Python detectron2: create
    OUTPUT_DIR, set up the "fvcore" and "detectron2" loggers, log the environment, arguments and
    config, save the config to OUTPUT_DIR/config.yaml, seed the RNGs (SEED + rank when SEED >= 0)
    and set cudnn benchmarking for training; CPU runs with data-loader workers share tensors
    through named shared-memory files.
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", _environment_info())
    logger.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        with PathManager.open(args.config_file, "r") as f:
            logger.info("Contents of args.config_file=%s:\n%s", args.config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        logger.info("Running with full config:\n%s", cfg.dump())
        with PathManager.open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    seed = None if cfg.SEED < 0 else cfg.SEED + rank
    seed_all_rng(seed)  # draws (and logs) a seed of its own when SEED < 0
    if seed is not None:
        logger.info("Seeded the random number generators with %d (SEED %d + rank)", seed, cfg.SEED)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    if cfg.MODEL.DEVICE == "cpu" and cfg.DATALOADER.NUM_WORKERS > 0:
        # Data-loader workers hand over every tensor of a batch (4 per image); the default
        # strategy passes one file descriptor per tensor. Shared-memory files by name: 5 instead
        # of 13 ms per batch of the CPU main job (`make bench`).
        torch.multiprocessing.set_sharing_strategy("file_system")


def setup(args: argparse.Namespace) -> CfgNode:
    """
    Build the frozen config of ``args.config_file`` and the trailing ``args.opts``, then set up
    the run (:func:`default_setup`) and the "mask_former" logger.
    A CUDA MODEL.DEVICE on a machine without CUDA falls back to the CPU, with a warning.
    """
    cfg = build_cfg(args)
    # The "mask_former" logger first, so that the fallback's warning reaches the log.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask_former")
    fall_back_to_cpu(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The log set-up of the interactive scripts (``demo/demo.py``, ``demo/app.py``)."""

import logging
import sys

from detectron2.utils.logger import setup_logger

__all__ = ["setup_script_logging"]


def setup_script_logging(logger: logging.Logger, tag: str) -> None:
    """
    Detectron2's log format for fvcore and mask_former; the script's own ``logger`` writes
    ``[time tag] LEVEL: message`` lines to stderr (where progress bars are), at INFO.
    """
    setup_logger(name="fvcore")
    setup_logger(name="mask_former")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"[%(asctime)s {tag}] %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

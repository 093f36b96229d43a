#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""A short check that the environment works: detectron2 and the MaskFormer config load."""

import logging

from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from mask_former import add_mask_former_config

logger = logging.getLogger("smoke_check")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_mask_former_config(cfg)
    logger.info("config has %d MODEL.MASK_FORMER keys", len(cfg.MODEL.MASK_FORMER))


if __name__ == "__main__":
    main()

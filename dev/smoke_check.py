#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""A short check that the environment works: detectron2 and the MaskFormer config load."""

import logging

from mask_former import get_mask_former_cfg

logger = logging.getLogger("smoke_check")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = get_mask_former_cfg()
    logger.info("config has %d MODEL.MASK_FORMER keys", len(cfg.MODEL.MASK_FORMER))


if __name__ == "__main__":
    main()

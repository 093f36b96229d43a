# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Generate the built-in shapes dataset ahead of time (it is otherwise generated on first use):

    python -m mask_former.data [--root $DETECTRON2_DATASETS]
"""

import argparse
import logging

from .datasets import datasets_root
from .shapes_generator import ensure_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the built-in shapes dataset.")
    parser.add_argument(
        "--root",
        default=datasets_root(),
        help="datasets root; the dataset goes to <root>/shapes",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(ensure_shapes_dataset(args.root))


if __name__ == "__main__":
    main()

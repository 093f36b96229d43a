#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
from setuptools import find_packages, setup

setup(
    name="mask_former",
    version="0.1.0",
    author="MaskFormer-D2 contributors",
    description="MaskFormer (per-pixel classification is not all you need) as a detectron2 plugin",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["mask_former", "mask_former.*"]),
    package_data={"mask_former": ["data/datasets/*.json"]},
    # Loose on purpose: a pin here would replace a user's own (CUDA) build of torch or
    # detectron2. requirements/*.txt holds the exact versions `make setup` installs.
    # Not listed: panopticapi-lite (the `panopticapi` module of COCOPanopticEvaluator), whose
    # metadata pins numpy<2 and would downgrade NumPy; install it without its dependencies:
    #   pip install --no-deps -r requirements/no-deps.txt
    install_requires=[
        "torch>=1.9",
        "torchvision",
        "detectron2",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "pycocotools",
        "fvcore",
    ],
    classifiers=["License :: OSI Approved :: Apache Software License"],
)

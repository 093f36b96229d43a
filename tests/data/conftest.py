# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
import numpy as np
import pytest
import torch

import mask_former  # noqa: F401  (installs the detectron2 bridge and registers everything)


@pytest.fixture(autouse=True)
def _seed():
    # The mappers draw their augmentations from numpy's and Python's global generators.
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

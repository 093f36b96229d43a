# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""A 4000 x 6000 photo goes through demo/demo.py: the drawing has the photo's size."""

import subprocess
import sys

import numpy as np
from PIL import Image

from tests.paths import REPO_ROOT


def test_demo_draws_a_4000_by_6000_image(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4000, 6000, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "large.jpg", quality=70)
    command = [
        sys.executable,
        "demo/demo.py",
        "--config-file",
        "configs/shapes/maskformer_R18_bs8_1200.yaml",
        "--input",
        str(tmp_path / "large.jpg"),
        "--output",
        str(tmp_path / "out"),
        "--opts",
        "MODEL.WEIGHTS",
        "",
        # The network sees at most 512 px; the outputs are resized to 4000 x 6000.
        "INPUT.MIN_SIZE_TEST",
        "256",
        "INPUT.MAX_SIZE_TEST",
        "512",
    ]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    with Image.open(tmp_path / "out" / "large.jpg") as drawn:
        assert drawn.size == (6000, 4000)

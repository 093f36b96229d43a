# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A model whose predictions are known, for the tests of the web demo (``tests/tools/test_app.py``
and ``tests/browser/test_app_page.py``): a small shapes MaskFormer whose every query predicts
one class with a known probability and an all-zero mask logit, saved as a training run saves
it (``config.yaml`` and ``model_final.pth`` with the class metadata).

What it predicts on any image, worked out by hand (K = 6 shapes classes, logit 4 for the
chosen class and 0 for the other 5 and for "no object"):

* class probability of every query: p = e^4 / (e^4 + 6) = 0.9010, above the config's
  object-mask threshold 0.8 and below 0.95; every mask logit 0, sigmoid 0.5 (>= 0.5: each
  query's own mask is the whole image);
* panoptic: all queries tie everywhere, query 0 owns every pixel, the others own none: one
  segment, id 1, of the chosen class, 100 % of the image; with an object-mask threshold of
  0.95 no query is kept: no segment;
* semantic: the chosen class everywhere; its share of the semantic scores is
  e^4 / (e^4 + 5) = 0.9161 (the "no object" probability is left out).
"""

import math
import os
from pathlib import Path
from typing import Tuple

import torch
from detectron2.modeling import build_model

from mask_former import load_config
from mask_former.checkpoint import AtomicCheckpointer
from mask_former.checkpoint.metadata import dataset_metadata
from tests.paths import REPO_ROOT

CONFIG = REPO_ROOT / "configs/shapes/maskformer_panoptic_R18_main.yaml"
# The shapes classes by contiguous id (mask_former/data/shapes_generator.py), written out here.
SHAPES_NAMES = ["circle", "square", "triangle", "gradient", "stripes", "blotches"]
STRIPES_COLOUR = (60, 180, 75)
WINNER = "stripes"
LOGIT = 4.0
QUERY_PROBABILITY = math.exp(LOGIT) / (math.exp(LOGIT) + 6)  # 0.9010
SEMANTIC_SHARE = math.exp(LOGIT) / (math.exp(LOGIT) + 5)  # 0.9161
# A small head on ResNet-18 without res5 (the main job's layout), so the file stays ~11 MB.
SMALL = [
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "1",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "4", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.DEVICE", "cpu",
]  # fmt: skip


def write_known_model(folder: Path, *opts: str) -> Tuple[Path, Path]:
    """
    Write ``config.yaml`` and ``model_final.pth`` of the known model (see the module docstring)
    into ``folder`` (created); ``opts``: more config overrides. Returns their paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(str(CONFIG), [*SMALL, *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        predictor.class_embed.weight.zero_()
        predictor.class_embed.bias.zero_()
        predictor.class_embed.bias[SHAPES_NAMES.index(WINNER)] = LOGIT
        predictor.mask_embed.layers[-1].weight.zero_()
        predictor.mask_embed.layers[-1].bias.zero_()
    config_path = folder / "config.yaml"
    config_path.write_text(cfg.dump())
    checkpointer = AtomicCheckpointer(model, save_dir=os.fspath(folder))
    checkpointer.metadata = dataset_metadata(cfg.DATASETS.TEST[0])
    checkpointer.save("model_final")
    return config_path, folder / "model_final.pth"

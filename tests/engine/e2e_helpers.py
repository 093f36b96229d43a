# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Helpers of the end-to-end training tests: a tiny panoptic shapes dataset (4 train / 2 val
images), a tiny MaskFormer config, ``train_net`` arguments, and (run as a module) a training
process that kills itself at a chosen point.
"""

import argparse
import functools
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

from mask_former.data.datasets import load_panoptic_json, register_dataset
from mask_former.data.datasets.shapes import shapes_metadata
from mask_former.data.shapes_generator import SHAPES_SPLITS, generate_split, shapes_dir
from tests.modeling.model_testing import tiny_cfg as tiny_model_cfg

PREFIX = "engine_e2e_"
TRAIN, VAL = PREFIX + "shapes_panoptic_train", PREFIX + "shapes_panoptic_val"


def register_tiny_shapes(root: str) -> None:
    """
    Register the tiny panoptic shapes splits under ``root`` (in every process that needs them).
    Registered directly rather than through ``register_shapes``, whose loaders would replace a
    dataset of other split sizes by the full one.
    """
    base, meta = shapes_dir(root), shapes_metadata()
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        panoptic_json = os.path.join(base, f"panoptic_{split}.json")
        dirs = {key: os.path.join(base, key, split) for key in ("images", "panoptic", "sem_seg")}
        loader = functools.partial(
            load_panoptic_json,
            panoptic_json,
            dirs["images"],
            dirs["panoptic"],
            dirs["sem_seg"],
            meta["thing_dataset_id_to_contiguous_id"],
            meta["stuff_dataset_id_to_contiguous_id"],
        )
        register_dataset(
            name,
            loader,
            {
                **meta,
                "image_root": dirs["images"],
                "sem_seg_root": dirs["sem_seg"],
                "panoptic_root": dirs["panoptic"],
                "panoptic_json": panoptic_json,
                "evaluator_type": "coco_panoptic_seg",
            },
        )


def make_tiny_datasets(root: str) -> str:
    """Generate the tiny shapes splits under ``root`` and register them as TRAIN and VAL."""
    base = shapes_dir(root)
    generate_split(base, "train", seed=SHAPES_SPLITS["train"][0], num_images=4)
    generate_split(base, "val", seed=SHAPES_SPLITS["val"][0], num_images=2)
    register_tiny_shapes(root)
    return root


def tiny_cfg(out_dir: str, **opts):
    """
    The tests' tiny MaskFormer (tests/modeling/model_testing.py) on a ResNet-18, for the 6
    classes of the tiny shapes datasets, on 64 px images, 2 iterations; then ``opts``.
    """
    cfg = tiny_model_cfg(
        "resnet18",
        **{
            "MODEL.PIXEL_MEAN": [123.7, 116.3, 103.5],
            "MODEL.PIXEL_STD": [58.4, 57.1, 57.4],
            "MODEL.RESNETS.NORM": "FrozenBN",  # per-image: batch composition does not matter
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6,
            "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 8,
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": True,
        },
    )
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (TRAIN,), (VAL,)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_panoptic"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.SIZE_DIVISIBILITY = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR = 2, 2, 1e-4
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "full_model", 0.01
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 5
    cfg.OUTPUT_DIR = out_dir
    for key, value in opts.items():
        cfg.merge_from_list([key, value])
    return cfg


def train_args(config_file: str, *opts, eval_only=False, resume=False, num_gpus=1):
    """The ``argparse.Namespace`` that ``train_net.py`` parses from these options."""
    return argparse.Namespace(
        config_file=config_file,
        opts=list(opts),
        eval_only=eval_only,
        resume=resume,
        num_gpus=num_gpus,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )


def write_cfg(cfg, path: Path) -> str:
    """Dump ``cfg`` to ``path``; returns the path as a string."""
    path.write_text(cfg.dump())
    return str(path)


def read_metrics(out_dir: str) -> List[Dict]:
    """The records of ``out_dir/metrics.json``."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def register_and_run(root: str, func: Callable, *args):
    """Register the tiny dataset under ``root``, then run ``func(*args)`` (for new processes)."""
    register_tiny_shapes(root)
    return func(*args)


# A train_net.py process that kills itself at a chosen point ------------------------------------
#
#   python -m tests.engine.e2e_helpers DATASETS_ROOT CONFIG [--resume]
#
# with E2E_KILL one of "iteration:N" (SIGKILL as iteration N starts), "checkpoint:NAME" (half of
# checkpoint NAME written, then SIGKILL) or "metrics:N" (half of the metrics.json lines written
# at iteration N, then SIGKILL); E2E_THREADS sets torch's thread count. The hooks exist only in
# this process: the library has no testing hook.


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_iteration(at: int) -> None:
    from mask_former.engine import Trainer

    run_step = Trainer.run_step

    def killing_run_step(self):
        if self.iter == at:
            _die()
        run_step(self)

    Trainer.run_step = killing_run_step


def _kill_in_checkpoint(name: str) -> None:
    save = torch.save

    def killing_save(obj, f, *args, **kwargs):
        # The checkpointer writes to a temporary file named after the checkpoint.
        if f"{name}." not in os.path.basename(getattr(f, "name", "")):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        _die()

    torch.save = killing_save


def _kill_in_metrics(at: int) -> None:
    from detectron2.utils.events import get_event_storage

    from mask_former.engine.writers import MetricsJSONWriter

    write = MetricsJSONWriter.write

    def killing_write(self):
        if get_event_storage().iter != at:
            return write(self)
        data = self._new_lines().encode("utf-8")
        os.write(self._open(), data[: len(data) // 2])
        _die()

    MetricsJSONWriter.write = killing_write


def main(argv: List[str]) -> None:
    """Run train_net.py's main on the tiny datasets, with the kill hook of $E2E_KILL."""
    import train_net

    root, config, *flags = argv
    torch.set_num_threads(int(os.environ.get("E2E_THREADS", torch.get_num_threads())))
    kind, _, where = os.environ.get("E2E_KILL", "").partition(":")
    hooks = {"iteration": _kill_at_iteration, "checkpoint": _kill_in_checkpoint}
    hooks["metrics"] = _kill_in_metrics
    if kind:
        hooks[kind](where if kind == "checkpoint" else int(where))
    register_tiny_shapes(root)
    train_net.main(train_args(config, resume="--resume" in flags))


if __name__ == "__main__":
    main(sys.argv[1:])

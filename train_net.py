#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
MaskFormer training and evaluation script (the Trainer lives in ``mask_former.engine``).

Train:
    ./train_net.py --num-gpus 8 --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml
With one GPU, also set e.g. ``SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.00005`` (AdamW recipes
have no linear LR scaling rule). Without CUDA, or with MODEL.DEVICE cpu, ``--num-gpus N`` runs
N CPU processes (gloo backend); on a 2-core machine, one process (2 threads) trains the shapes
recipe faster than two.

Evaluate (``TEST.AUG.ENABLED True`` adds multi-scale + flip test-time augmentation):
    ./train_net.py --config-file <config.yaml> --eval-only MODEL.WEIGHTS /path/to/model_final.pth

Resume the run in OUTPUT_DIR from its last checkpoint (a killed run resumes exactly; see
README.md, "Interruption and checkpoint safety"):
    ./train_net.py --config-file <config.yaml> --resume
"""

import sys

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import mask_former  # noqa: F401  (registers the model, heads, mappers and datasets)
from mask_former.checkpoint import (
    AtomicCheckpointer,
    CheckpointError,
    UntrustedCheckpointError,
    load_model_weights,
)
from mask_former.engine import Trainer, launch, runs_on_cpu, setup


def evaluate(cfg, args) -> dict:
    """
    Evaluate MODEL.WEIGHTS (or OUTPUT_DIR's last checkpoint with --resume) on DATASETS.TEST.
    The weights must fit the model (mask_former.checkpoint.load_model_weights), unless
    MODEL.ALLOW_PARTIAL_WEIGHTS.
    """
    model = Trainer.build_model(cfg)
    path = cfg.MODEL.WEIGHTS
    if args.resume:
        path = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).get_checkpoint_file() or path
    load_model_weights(model, path, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    parser = default_argument_parser()
    parser.description = __doc__.strip().split("\n\n")[0]
    args = parser.parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            use_cpu=runs_on_cpu(args),
        )
    except (CheckpointError, UntrustedCheckpointError) as e:
        # A refused, unreadable or unfitting MODEL.WEIGHTS: one line naming the file, status 1.
        sys.exit(str(e))


if __name__ == "__main__":
    invoke_main()

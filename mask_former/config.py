# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Configs of MaskFormer runs.

* :func:`load_config` is the one place where a run's config is built from a YAML file and
  overrides: ``train_net.py``, the demo, the Predictor and every tool call it.
* :func:`get_mask_former_cfg` is the default config with every key (the factory it starts from).
* :func:`add_mask_former_config` adds the keys to a config of the user's (after
  ``detectron2.projects.deeplab.add_deeplab_config``), as the original's users call it.
"""

import os
from typing import Optional, Sequence, Union

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.utils.file_io import PathManager

from .utils.device import fall_back_to_cpu

__all__ = ["add_mask_former_config", "get_mask_former_cfg", "load_config"]

ConfigSource = Union[str, "os.PathLike[str]", CN, None]


def load_config(
    config: ConfigSource = None,
    opts: Sequence[str] = (),
    *,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    cpu_fallback: bool = True,
    freeze: bool = True,
) -> CN:
    """
    The config of a run: the defaults of :func:`get_mask_former_cfg`, then ``config``, then
    ``opts``, then ``weights`` and ``device``.

    Args:
        config: a YAML file (its ``_BASE_`` chain included), loaded without running Python tags
            (``!!python/...`` are refused); a CfgNode, copied; or None for the defaults.
        opts: overrides as KEY VALUE pairs, as on a command line
            (``("MODEL.WEIGHTS", "model.pkl", "SOLVER.MAX_ITER", "100")``).
        weights: MODEL.WEIGHTS, when not None (applied after ``opts``).
        device: MODEL.DEVICE, when not None (applied after ``opts``).
        cpu_fallback: a CUDA MODEL.DEVICE on a machine without CUDA becomes "cpu", with a
            warning (:func:`mask_former.utils.fall_back_to_cpu`).
        freeze: return the config frozen.

    Raises:
        FileNotFoundError: ``config`` names no file.
        KeyError, ValueError: from yacs, for an unknown key or a value of the wrong type
            (the message names the key).
    """
    if isinstance(config, CN):
        cfg = config.clone()
        cfg.defrost()
    else:
        cfg = get_mask_former_cfg()
        if config is not None and os.fspath(config) != "":
            path = os.fspath(config)
            if not PathManager.isfile(path):
                raise FileNotFoundError(f"Config file {path!r} does not exist")
            cfg.merge_from_file(path, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    if cpu_fallback:
        fall_back_to_cpu(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def get_mask_former_cfg() -> CN:
    """A new (unfrozen) detectron2 default config with the DeepLab and MaskFormer keys added."""
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_mask_former_config(cfg)
    return cfg


def add_mask_former_config(cfg: CN) -> None:
    """
    Add every MaskFormer config key with its default to ``cfg`` (in place). The groups below
    follow the subtrees they extend; keys that only Mask2Former has are marked "(M2F)".
    """
    _add_input_config(cfg)
    _add_solver_config(cfg)
    _add_model_config(cfg)
    _add_mask_former_model_config(cfg)
    _add_sem_seg_head_config(cfg)
    _add_swin_config(cfg)


def _add_input_config(cfg: CN) -> None:
    # Train-time dataset mapper: "mask_former_semantic", "mask_former_panoptic" or
    # "detr_panoptic"; any other name falls back to detectron2's DatasetMapper.
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # Append the SSD-style photometric augmentation (brightness/contrast/saturation/hue).
    cfg.INPUT.COLOR_AUG_SSD = False
    # Crop retries until no single category covers more than this fraction (1.0 = disabled).
    # add_deeplab_config also sets it; repeated here so this function works on its own.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad image and targets in the mapper to this size (<= 0: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    # Learning-rate factor of every parameter whose module path contains "backbone".
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of nn.Embedding parameters (the learned queries).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # SOLVER.AMP.ENABLED on the CPU: "auto" trains in bfloat16 only where the CPU computes it
    # natively (mask_former.utils.cpu.cpu_supports_native_bfloat16) and in float32 otherwise,
    # where bfloat16 is much slower; "bfloat16" or "float32" force one. CUDA ignores it (float16).
    cfg.SOLVER.AMP.CPU_PRECISION = "auto"
    # > 0: train for about this many minutes (the loop; the final evaluation comes after it).
    # SOLVER.MAX_ITER is then the longest schedule: the step time measured over iterations 20 to
    # 120 shortens it (LR decay, final checkpoint and evaluation) to the multiple of 100 iterations
    # that fits (mask_former.engine.time_budget). 0: exactly SOLVER.MAX_ITER iterations.
    cfg.SOLVER.TIME_BUDGET_MINUTES = 0.0


def _add_model_config(cfg: CN) -> None:
    # Inference (the demo, the Predictor, --eval-only, the tools) refuses MODEL.WEIGHTS that
    # leave a parameter or buffer of the model without a value or have other shapes; True allows
    # such a partial load on purpose (the rest stays randomly initialised). Training always
    # allows partial loads (fine-tuning from a backbone checkpoint).
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False


def _add_mask_former_model_config(cfg: CN) -> None:
    cfg.MODEL.MASK_FORMER = CN()

    # Loss: deep supervision adds the three losses of every intermediate decoder layer.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Cross-entropy weight of the "no object" class (called eos_coef in DETR).
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Weights of the classification, mask (focal, or BCE when point-sampled) and dice terms,
    # used both in the loss and in the Hungarian matching cost.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0  # (M2F)
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Point-sampled mask loss and matching of Mask2Former: number of points per mask
    # (0 = MaskFormer's full-resolution sigmoid-focal loss), candidate oversampling and the
    # share of points taken where the prediction is most uncertain.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 0  # (M2F, default 112 * 112 there)
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0  # (M2F)
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75  # (M2F)

    # Transformer predictor.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0  # encoder layers inside the predictor
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Feature the predictor attends to: a backbone feature name, "transformer_encoder" for the
    # output of TransformerEncoderPixelDecoder, or "pixel_embedding" (M2F) for the mask features.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Use the 1x1 input projection even when its input already has HIDDEN_DIM channels.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False

    # Pad the batch in the model to a multiple of this (< 0: the backbone's own
    # size_divisibility; 0: only to the largest image of the batch).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # Inference.
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True  # (M2F)
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False  # (M2F)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Panoptic: drop queries whose class score is not above this.
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic: drop segments that keep less than this fraction of their own mask.
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize mask logits to the output size before semantic inference rather than after
    # (always done when panoptic or instance inference is on).
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Precision of the network in inference: "float32", or autocast to "bfloat16" (CUDA, and
    # CPUs with native bfloat16; elsewhere float32 with a warning) or "float16" (CUDA only), or
    # "auto": bfloat16 where the CPU computes it natively, float32 on other CPUs, bfloat16 or
    # float16 on CUDA. Post-processing always runs in float32. The default stays float32, so
    # evaluation reproduces the original's numbers; the Predictor and the demo run "auto".
    cfg.MODEL.MASK_FORMER.TEST.PRECISION = "float32"
    # Run the network of inference through torch.compile (inductor, with frozen weights on the
    # CPU), made on the first inference call; each padded input shape compiles once (up to 4
    # shapes, then eager). See mask_former/modeling/compiled.py and docs/performance.md.
    cfg.MODEL.MASK_FORMER.TEST.COMPILE = False
    # "whole": the network sees the whole (test-resized) image at once. "slide": it sees windows
    # of SLIDE_CROP_SIZE (H, W) every SLIDE_STRIDE (H, W) pixels, the last window of a row or
    # column aligned to the image's border, and the semantic scores of overlapping windows are
    # averaged (as mmsegmentation's slide inference); for large images. Semantic inference only
    # (PANOPTIC_ON and INSTANCE_ON are refused); the averaged scores are resized to the output
    # size (SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE does not apply).
    cfg.MODEL.MASK_FORMER.TEST.MODE = "whole"
    cfg.MODEL.MASK_FORMER.TEST.SLIDE_CROP_SIZE = (512, 512)
    # At most the crop size in each direction (else pixels between windows would be missed).
    cfg.MODEL.MASK_FORMER.TEST.SLIDE_STRIDE = (341, 341)


def _add_sem_seg_head_config(cfg: CN) -> None:
    # Channels of the mask embeddings and of the per-pixel embeddings.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Encoder layers of TransformerEncoderPixelDecoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    # Name in PIXEL_DECODER_REGISTRY: "BasePixelDecoder" or "TransformerEncoderPixelDecoder".
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"


def _add_swin_config(cfg: CN) -> None:
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None  # None: head_dim ** -0.5
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    # Stochastic depth, rising linearly from 0 to this over all blocks.
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False  # absolute position embedding
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

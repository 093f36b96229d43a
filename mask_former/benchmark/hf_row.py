# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The benchmark row beside Hugging Face transformers' MaskFormer, on the same weights: an HF
``MaskFormerForInstanceSegmentation`` with seeded random weights (the R50 or Swin-T ADE20K-150
layout, built from configs: nothing is downloaded) is converted by
``tools/convert-hf-maskformer-to-d2.py`` into this project's config and weights; then one
seeded noise image goes, calls alternating, through

- HF in float32 as users run it: ``model(pixel_values=...)`` and
  ``MaskFormerImageProcessor.post_process_semantic_segmentation`` to the image size;
- this project's ``build_model`` of the converted config in eval mode,
  ``model([{"image", "height", "width"}])[0]["sem_seg"]`` and its argmax, once per variant
  (config options such as ``MODEL.MASK_FORMER.TEST.PRECISION auto``).

Two agreements are reported per variant. The argmax maps as each side returns them differ
where classes meet, by design: HF combines classes and masks at stride 4 and resizes the class
scores, this project (as the original MaskFormer) resizes the mask logits first, and it pads
the image to a multiple of 32 where HF does not. The networks alone are compared by running
both on this project's padded input and post-processing both outputs HF's way.

Shape shorthand in this module: Q queries, K classes, H, W image height and width.
"""

import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .report import fmt_ms, markdown
from .rows import REPO
from .worker import summarize, time_calls, torch_threads

__all__ = [
    "BACKBONES",
    "DEFAULT_VARIANTS",
    "bench_hf",
    "convert_seeded",
    "hf_config",
    "hf_table",
    "seeded_weights",
]

logger = logging.getLogger("benchmark")

CONVERTER = os.path.join(REPO, "tools", "convert-hf-maskformer-to-d2.py")
BACKBONES = ("R50", "Swin-T")
HF_NAME = "HF transformers float32"
# (name, config options) of the project's variants measured by default.
DEFAULT_VARIANTS: List[Tuple[str, List[str]]] = [
    ("float32", []),
    ("auto", ["MODEL.MASK_FORMER.TEST.PRECISION", "auto"]),
    (
        "auto+compile",
        ["MODEL.MASK_FORMER.TEST.PRECISION", "auto", "MODEL.MASK_FORMER.TEST.COMPILE", "True"],
    ),
]
# MaskFormerImageProcessor's normalisation (ImageNet), written beside the HF weights so that the
# converter reads it rather than assuming it.
_PROCESSOR = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def hf_config(backbone: str, num_classes: int = 150) -> Any:
    """
    The ``transformers.MaskFormerConfig`` of the ADE20K-150 configs' layout:
    ``configs/ade20k-150/maskformer_R50_bs16_160k.yaml`` ("R50": a torchvision-style ResNet-50,
    stride in the 3x3 convolution) or ``swin/maskformer_swin_tiny_bs16_160k.yaml`` ("Swin-T");
    a 256-channel pixel decoder and mask features, 6 post-norm decoder layers of width 256 with
    8 heads and 2048 feed-forward channels, 100 queries, ``num_classes`` classes.
    """
    import transformers

    if backbone == "R50":
        backbone_config = transformers.ResNetConfig(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
    elif backbone == "Swin-T":
        backbone_config = transformers.SwinConfig(
            image_size=224,
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            drop_path_rate=0.0,
        )
    else:
        raise ValueError(f"backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    decoder = transformers.MaskFormerDetrConfig(
        d_model=256,
        decoder_layers=6,
        decoder_attention_heads=8,
        decoder_ffn_dim=2048,
        num_queries=100,
        dropout=0.0,
    )
    names = [f"class {i}" for i in range(num_classes)]
    return transformers.MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=decoder,
        fpn_feature_size=256,
        mask_feature_size=256,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )


# Gains applied to the random init (see :func:`seeded_weights`).
_CROSS_ATTENTION_QUERY_GAIN = 4.0
_CLASS_GAIN = 3.0
_MASK_GAIN = 2.0


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


@torch.no_grad()
def seeded_weights(model: nn.Module, seed: int, size: Tuple[int, int]) -> None:
    """
    Draw the HF model's weights from ``seed`` so that its semantic map of a noise image tends
    to have several classes (the row reports how many). As HF initialises it (linear layers
    std 0.02, identity norms), every query leaves the decoder nearly the same and every pixel
    gets one class, so an agreement of two maps would say nothing. Here: linear weights
    N(0, 1/fan_in), query embeddings N(0, 1), norm scales in 0.75..1.25 and shifts in
    -0.1..0.1, BatchNorm statistics measured on a seeded noise image of ``size`` (H, W) (so
    that the deep ResNet features vary in space), and the cross-attention queries, the class
    and the mask predictors scaled up (sharper attention: the queries differ; confident
    classes, saturated masks).
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fan_in = module.weight.shape[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) / fan_in**0.5)
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            module.weight.copy_(0.75 + 0.5 * torch.rand(module.weight.shape, generator=g))
            module.bias.copy_(0.2 * torch.rand(module.bias.shape, generator=g) - 0.1)
    for name, module in model.named_modules():
        if name.endswith("encoder_attn.q_proj"):
            module.weight.mul_(_CROSS_ATTENTION_QUERY_GAIN)
    model.class_predictor.weight.mul_(_CLASS_GAIN)
    _last_linear(model.mask_embedder).weight.mul_(_MASK_GAIN)
    _calibrate_batch_norms(model, torch.randn((1, 3) + tuple(size), generator=g))


def _calibrate_batch_norms(model: nn.Module, pixel_values: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``pixel_values`` (1, 3, H, W)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
        norm.train()
    model(pixel_values=pixel_values)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()


def _converter() -> Any:
    """``tools/convert-hf-maskformer-to-d2.py`` of this checkout, imported as a module."""
    name = "_benchmark_convert_hf_maskformer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CONVERTER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def convert_seeded(
    config: Any, seed: int, size: Tuple[int, int], folder: str
) -> Tuple[nn.Module, str]:
    """
    An HF MaskFormer of ``config`` with the weights of :func:`seeded_weights`, saved to
    ``folder/hf`` with ``save_pretrained`` and converted there by the project's converter.

    Returns:
        (nn.Module, str): the HF model in eval mode, and the converted config file (whose
        MODEL.WEIGHTS names the converted weights).
    """
    import transformers

    torch.manual_seed(seed)
    model = transformers.MaskFormerForInstanceSegmentation(config)
    seeded_weights(model, seed, size)
    hf_dir = os.path.join(folder, "hf")
    model.save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "preprocessor_config.json"), "w") as f:
        json.dump(_PROCESSOR, f)
    config_path = os.path.join(folder, "converted.yaml")
    _converter().convert(hf_dir, os.path.join(folder, "converted.pkl"), config_path)
    return model.eval(), config_path


def _project_model(config_path: str, opts: Sequence[str]) -> Tuple[nn.Module, Optional[str]]:
    """
    This project's model of the converted config with ``opts``, its weights loaded, in eval
    mode, and the autocast dtype its precision resolves to on the CPU (None: float32).
    """
    from detectron2.modeling import build_model

    from ..checkpoint import load_model_weights
    from ..config import load_config
    from ..modeling.precision import inference_autocast_dtype

    cfg = load_config(config_path, list(opts) + ["MODEL.DEVICE", "cpu"], cpu_fallback=False)
    model = build_model(cfg).eval()
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    dtype = inference_autocast_dtype(cfg.MODEL.MASK_FORMER.TEST.PRECISION, "cpu")
    return model, None if dtype is None else str(dtype).replace("torch.", "")


def _hf_caller(model: nn.Module, config_path: str, image: torch.Tensor) -> Callable:
    """
    One HF inference as users run it: the image normalised as the converted config's
    PIXEL_MEAN/STD say (HF's mean/std x 255), ``model(pixel_values=...)`` and the processor's
    ``post_process_semantic_segmentation`` to the image size; returns the (H, W) class map.
    """
    import transformers

    from ..config import load_config

    cfg = load_config(config_path, ["MODEL.DEVICE", "cpu"], cpu_fallback=False)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    pixel_values = ((image - mean) / std)[None]
    processor = transformers.MaskFormerImageProcessor(**_PROCESSOR)
    size = [tuple(image.shape[-2:])]

    def call() -> torch.Tensor:
        outputs = model(pixel_values=pixel_values)
        return processor.post_process_semantic_segmentation(outputs, target_sizes=size)[0]

    return call


def _project_caller(model: nn.Module, image: torch.Tensor) -> Callable:
    """One call of this project's model on the image; returns the (H, W) argmax of sem_seg."""
    inputs = [{"image": image, "height": image.shape[-2], "width": image.shape[-1]}]
    return lambda: model(inputs)[0]["sem_seg"].argmax(dim=0)


def noise_image(size: Tuple[int, int], seed: int) -> torch.Tensor:
    """
    A seeded float32 (3, H, W) noise image in 0..255 with structure at the scale of the
    deepest features: uniform noise at 1/32 of ``size`` upsampled (bicubic), plus 15% of
    uniform pixel noise. (On white noise alone nearly every pixel of a random model's map has
    the same class.)
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand((1, 3, max(2, h // 32), max(2, w // 32)), generator=g)
    smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    image = 0.85 * smooth[0] + 0.15 * torch.rand((3, h, w), generator=g)
    return 255.0 * image.clamp(0.0, 1.0)


def _hf_post_processing(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """HF's semantic map at stride 1 of the network outputs (1, Q, K + 1) and (1, Q, h, w)."""
    import transformers
    from transformers.models.maskformer.modeling_maskformer import (
        MaskFormerForInstanceSegmentationOutput as Output,
    )

    outputs = Output(class_queries_logits=logits, masks_queries_logits=masks)
    processor = transformers.MaskFormerImageProcessor(**_PROCESSOR)
    size = [(4 * masks.shape[-2], 4 * masks.shape[-1])]
    return processor.post_process_semantic_segmentation(outputs, target_sizes=size)[0]


@torch.no_grad()
def _network_agreement(
    hf_model: nn.Module, models: Dict[str, nn.Module], image: torch.Tensor
) -> Dict[str, float]:
    """
    Share of pixels where each of ``models``' network outputs and HF's, on the same
    normalised and padded image (this project's preprocessing), give the same class when both
    are post-processed HF's way; by model name.
    """
    if not models:
        return {}
    padded = next(iter(models.values())).preprocess_image([{"image": image}]).tensor
    reference = hf_model(pixel_values=padded)
    hf_map = _hf_post_processing(reference.class_queries_logits, reference.masks_queries_logits)
    same = {}
    for name, model in models.items():
        out = model.head_outputs(padded)
        ours = _hf_post_processing(out["pred_logits"].float(), out["pred_masks"].float())
        same[name] = (ours == hf_map).double().mean().item()
    return same


def _timed(call: Callable) -> Tuple[float, torch.Tensor]:
    """Seconds of one call of ``call``, and what it returned."""
    out = []
    (seconds,) = time_calls(lambda: out.append(call()), 0, 1, "cpu")
    return seconds, out[0]


def _alternate(
    callers: Dict[str, Callable], warmup: int, repeats: int
) -> Tuple[Dict[str, float], Dict[str, List[float]], Dict[str, torch.Tensor]]:
    """
    First call of each (timed on its own), ``warmup`` untimed calls each, then ``repeats``
    rounds of one timed call each, in turn.

    Returns:
        first-call seconds, the timed seconds and the last (H, W) class map, each by name.
    """
    first, samples, maps = {}, {name: [] for name in callers}, {}
    with torch.no_grad():
        for name, call in callers.items():
            first[name], maps[name] = _timed(call)
            logger.info("HF row: first call of %s took %.1f s", name, first[name])
        for _ in range(warmup):
            for call in callers.values():
                call()
        for _ in range(repeats):
            for name, call in callers.items():
                seconds, maps[name] = _timed(call)
                samples[name].append(seconds)
    return first, samples, maps


def _entries(
    backbone: str,
    size: Tuple[int, int],
    runs_in: Dict[str, Optional[str]],
    timings: Tuple[Dict[str, float], Dict[str, List[float]], Dict[str, torch.Tensor]],
    network_same: Dict[str, float],
) -> List[Dict]:
    first, samples, maps = timings
    hf_ms = statistics.median(samples[HF_NAME]) * 1000.0
    entries = []
    for name in samples:
        stats = summarize(samples[name])
        entry = {"backbone": backbone, "size": list(size), "name": name, **stats}
        entry.update(runs_in=runs_in[name], first_call_s=first[name])
        if name == HF_NAME:  # how much an agreement with this map says
            counts = torch.unique(maps[name], return_counts=True)[1]
            share = counts.max().item() / maps[name].numel()
            entry.update(classes=len(counts), largest_class_share=share)
        else:
            same = (maps[name] == maps[HF_NAME]).double().mean().item()
            entry.update(speedup_vs_hf=hf_ms / stats["median_ms"], same_argmax_vs_hf=same)
            entry["same_network_argmax_vs_hf"] = network_same[name]
        entries.append(entry)
    return entries


def bench_hf(
    backbone: str,
    size: Tuple[int, int] = (512, 683),
    repeats: int = 5,
    threads: int = 2,
    seed: int = 0,
    variants: Sequence[Tuple[str, Sequence[str]]] = DEFAULT_VARIANTS,
    *,
    warmup: int = 1,
    config: Optional[Any] = None,
) -> List[Dict]:
    """
    HF transformers' MaskFormer beside this project's variants on the same converted weights
    and one seeded noise image (:func:`noise_image`) of ``size`` (H, W), calls alternating
    (see the module docstring).

    Args:
        backbone: "R50" or "Swin-T" (the layout of :func:`hf_config`); with ``config`` only
            the name in the entries.
        variants: (name, config options) of this project's models.
        threads: torch's intra-op threads for the row (restored afterwards); 0: unchanged.
        warmup: untimed calls of each after its first call.
        config: a ``transformers.MaskFormerConfig`` to measure instead of the named layout
            (e.g. a tiny one in tests).

    Returns:
        one dict per side, HF's first: "name", "backbone", "size", the summary in ms
        (median_ms, min_ms, max_ms, ms), "runs_in" (autocast dtype, None: float32) and
        "first_call_s" (the first call, not in the summary). HF's also has "classes" and
        "largest_class_share" of its map; each variant's "speedup_vs_hf" (HF's median / the
        variant's), "same_argmax_vs_hf" (share of pixels whose class equals HF's) and
        "same_network_argmax_vs_hf" (the same for the networks alone, see the module
        docstring).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    hf = config if config is not None else hf_config(backbone)
    image = noise_image(size, seed)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="benchmark-hf-") as folder:
        hf_model, config_path = convert_seeded(hf, seed, size, folder)
        callers = {HF_NAME: _hf_caller(hf_model, config_path, image)}
        runs_in: Dict[str, Optional[str]] = {HF_NAME: None}
        models = {}
        for name, opts in variants:
            models[name], runs_in[name] = _project_model(config_path, opts)
            callers[name] = _project_caller(models[name], image)
        timings = _alternate(callers, warmup, repeats)
        network_same = _network_agreement(hf_model, models, image)
    return _entries(backbone, size, runs_in, timings, network_same)


def hf_table(entries: List[Dict], env: Dict) -> str:
    """The HF row: per backbone, HF's latency and each variant's, speed-up and agreement."""
    header = ["backbone", "size", "inference", "runs in", "ms median (min-max)"]
    header += ["speed-up vs HF", "same argmax as HF", "networks: same argmax", "first call s"]
    rows, notes = [], []
    for e in entries:
        if "classes" in e:
            notes.append(
                f"{e['backbone']} {'x'.join(map(str, e['size']))}: HF's map has {e['classes']} "
                f"classes, the largest on {100 * e['largest_class_share']:.1f}% of the pixels"
            )
        speedup = e.get("speedup_vs_hf")
        same = e.get("same_argmax_vs_hf")
        network = e.get("same_network_argmax_vs_hf")
        rows.append(
            [
                e["backbone"],
                "x".join(map(str, e["size"])),
                e["name"] if e["name"] == HF_NAME else f"this project, {e['name']}",
                e["runs_in"] or "float32",
                fmt_ms(e),
                "-" if speedup is None else f"{speedup:.2f}x",
                "-" if same is None else f"{100 * same:.2f}%",
                "-" if network is None else f"{100 * network:.2f}%",
                f"{e['first_call_s']:.1f}",
            ]
        )
    title = (
        "Beside Hugging Face transformers' MaskFormer, same converted weights, one image "
        "(HF: its model and post_process_semantic_segmentation; first call not in the times; "
        "networks: both on this project's padded input, both post-processed HF's way)"
    )
    return markdown(title, env, header, rows, notes)

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
How a Hugging Face ``transformers`` MaskFormer maps onto this project's MaskFormer: the config
keys that build the same network, and the names of its weights. Used by
``tools/convert-hf-maskformer-to-d2.py``; it imports neither transformers nor detectron2 and
reads the HF config through attribute access only.

Module correspondence (HF ``MaskFormerForInstanceSegmentation`` -> this project):

- ``pixel_level_module.encoder``: ``MaskFormerSwinBackbone`` -> ``D2SwinTransformer``
  (``hidden_states_norms.i`` -> ``norm{i}``; query/key/value fused into ``qkv``), or
  ``ResNetBackbone`` -> detectron2's ``build_resnet_backbone`` (basic stem, stride where
  ``downsample_in_bottleneck`` puts it).
- ``pixel_level_module.decoder`` (an FPN) -> ``BasePixelDecoder``: the structures are equal:
  ``fpn.stem`` (3x3 conv + GN + ReLU on the coarsest feature) is ``layer_{n}``; ``fpn.layers.j``
  (1x1 ``proj`` + GN, then 3x3 ``block`` + GN + ReLU, nearest upsampling) is level n - 1 - j
  (``adapter_*``, ``layer_*``); ``mask_projection`` (3x3, bias) is ``mask_features``.
- ``transformer_module`` -> ``TransformerPredictor``: the same sine position encoding
  (normalised, hidden/2 features per axis), ``queries_embedder`` -> ``query_embed``,
  ``input_projection`` -> ``input_proj``; the DETR decoder layers are post-norm as here
  (``self_attn_layer_norm``, ``encoder_attn_layer_norm``, ``final_layer_norm`` -> ``norm1..3``)
  and ``decoder.layernorm`` -> ``transformer.decoder.norm``.
- ``class_predictor`` -> ``class_embed``; ``mask_embedder.i.0`` -> ``mask_embed.layers.i``.

What has no counterpart raises :class:`UnsupportedCheckpointError` naming the HF config field.
"""

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "UnsupportedCheckpointError",
    "backbone_feature_names",
    "model_config",
    "require",
    "convert_state_dict",
]

SWIN_TYPES = ("swin", "maskformer-swin")
RESNET_TYPES = ("resnet",)
# detectron2's build_resnet_backbone knows these stage depths only.
_RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}


class UnsupportedCheckpointError(ValueError):
    """The HF checkpoint uses something this project's MaskFormer cannot reproduce."""


def _refuse(field: str, value: Any, why: str) -> None:
    raise UnsupportedCheckpointError(f"HF config field {field} = {value!r}: {why}")


def require(ok: bool, field: str, value: Any, why: str) -> None:
    """Raise :class:`UnsupportedCheckpointError` about HF config ``field`` unless ``ok``."""
    if not ok:
        _refuse(field, value, why)


def _expect(config: Any, field: str, allowed: Sequence, why: str) -> None:
    """Require the attribute named by the last part of ``field`` to be one of ``allowed``."""
    value = getattr(config, field.rsplit(".", 1)[-1], None)
    require(value in allowed, field, value, why)


# Config --------------------------------------------------------------------------------------


def _backbone_type(hf_config: Any) -> str:
    backbone = getattr(hf_config, "backbone_config", None)
    if backbone is None:
        _refuse("backbone_config", None, "a backbone loaded by name (timm/hub) is not supported")
    kind = backbone.model_type
    require(
        kind in SWIN_TYPES + RESNET_TYPES,
        "backbone_config.model_type",
        kind,
        "only Swin (D2SwinTransformer) and ResNet (build_resnet_backbone) backbones have a "
        "counterpart here",
    )
    _expect(backbone, "backbone_config.num_channels", (3,), "the backbones take RGB images")
    return kind


def backbone_feature_names(hf_config: Any) -> List[str]:
    """The backbone outputs ("res2".."res5") that HF's pixel decoder uses, finest first."""
    backbone = hf_config.backbone_config
    if backbone.model_type in SWIN_TYPES:
        # MaskFormerPixelLevelModule always asks a Swin backbone for stage1..stage4.
        return ["res2", "res3", "res4", "res5"]
    names = []
    for stage in backbone.out_features:
        match = re.fullmatch(r"stage([1-4])", stage)
        require(
            match is not None,
            "backbone_config.out_features",
            list(backbone.out_features),
            f"{stage!r} has no detectron2 ResNet output (stage1..stage4 -> res2..res5)",
        )
        names.append(f"res{int(match.group(1)) + 1}")
    require(
        names == sorted(names) and len(set(names)) == len(names) and len(names) >= 1,
        "backbone_config.out_features",
        list(backbone.out_features),
        "stages must be distinct and in increasing order",
    )
    return names


def _swin_config(backbone: Any) -> Dict[str, Any]:
    _expect(
        backbone,
        "backbone_config.use_absolute_embeddings",
        (False, None),
        "HF adds a (1, patches + 1, C) table without resizing it; D2SwinTransformer's APE is a "
        "resized (1, C, h, w) map, so the two cannot compute the same thing",
    )
    _expect(backbone, "backbone_config.hidden_act", ("gelu",), "the Swin MLP uses exact GELU")
    eps = getattr(backbone, "layer_norm_eps", 1e-5)
    require(abs(eps - 1e-5) < 1e-12, "backbone_config.layer_norm_eps", eps, "LayerNorms use 1e-5")
    require(len(backbone.depths) == 4, "backbone_config.depths", backbone.depths, "need 4 stages")
    patch = backbone.patch_size
    if isinstance(patch, (list, tuple)):
        require(len(set(patch)) == 1, "backbone_config.patch_size", patch, "must be square")
        patch = patch[0]
    image_size = backbone.image_size
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    return {
        "MODEL.BACKBONE.NAME": "D2SwinTransformer",
        "MODEL.SWIN.PRETRAIN_IMG_SIZE": int(image_size),
        "MODEL.SWIN.PATCH_SIZE": int(patch),
        "MODEL.SWIN.EMBED_DIM": int(backbone.embed_dim),
        "MODEL.SWIN.DEPTHS": [int(d) for d in backbone.depths],
        "MODEL.SWIN.NUM_HEADS": [int(h) for h in backbone.num_heads],
        "MODEL.SWIN.WINDOW_SIZE": int(backbone.window_size),
        "MODEL.SWIN.MLP_RATIO": float(backbone.mlp_ratio),
        "MODEL.SWIN.QKV_BIAS": bool(backbone.qkv_bias),
        "MODEL.SWIN.QK_SCALE": None,
        "MODEL.SWIN.DROP_RATE": float(backbone.hidden_dropout_prob),
        "MODEL.SWIN.ATTN_DROP_RATE": float(backbone.attention_probs_dropout_prob),
        "MODEL.SWIN.DROP_PATH_RATE": float(backbone.drop_path_rate),
        "MODEL.SWIN.APE": False,
        "MODEL.SWIN.PATCH_NORM": True,
        "MODEL.SWIN.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    }


def _resnet_config(backbone: Any, out_features: List[str]) -> Dict[str, Any]:
    _expect(backbone, "backbone_config.hidden_act", ("relu",), "detectron2's ResNet uses ReLU")
    _expect(
        backbone,
        "backbone_config.downsample_in_first_stage",
        (False,),
        "detectron2's res2 has stride 1 (after the stem's max-pool)",
    )
    layer_type, depths = backbone.layer_type, tuple(int(d) for d in backbone.depths)
    depth = _RESNET_DEPTHS.get((layer_type, depths))
    require(
        depth is not None,
        "backbone_config.depths",
        list(depths),
        f"with layer_type {layer_type!r}, detectron2's ResNet only has the stage depths "
        f"{[list(d) for t, d in _RESNET_DEPTHS if t == layer_type]}",
    )
    widths = [int(w) for w in backbone.hidden_sizes]
    require(
        widths == [widths[0] * 2**i for i in range(4)],
        "backbone_config.hidden_sizes",
        widths,
        "detectron2's ResNet doubles the width at every stage",
    )
    if layer_type == "basic":
        require(widths[0] == 64, "backbone_config.hidden_sizes", widths, "R18/R34 need 64")
    else:
        require(widths[0] % 4 == 0, "backbone_config.hidden_sizes", widths, "need multiples of 4")
    return {
        "MODEL.BACKBONE.NAME": "build_resnet_backbone",
        "MODEL.BACKBONE.FREEZE_AT": 0,
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.OUT_FEATURES": out_features,
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.RESNETS.STEM_OUT_CHANNELS": int(backbone.embedding_size),
        "MODEL.RESNETS.RES2_OUT_CHANNELS": widths[0],
        # HF's bottleneck reduces every stage's width by 4: one group of width / 4 channels.
        "MODEL.RESNETS.NUM_GROUPS": 1,
        "MODEL.RESNETS.WIDTH_PER_GROUP": widths[0] // 4,
        "MODEL.RESNETS.STRIDE_IN_1X1": bool(getattr(backbone, "downsample_in_bottleneck", False)),
        "MODEL.RESNETS.RES5_DILATION": 1,
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    }


def _check_decoder(decoder: Any) -> None:
    _expect(decoder, "decoder_config.model_type", ("detr",), "the predictor is a DETR decoder")
    _expect(
        decoder,
        "decoder_config.auxiliary_loss",
        (False,),
        "HF then feeds each decoder layer the *normalised* output of the previous one (and "
        "normalises the last output twice), while DETR and this project normalise only the "
        "outputs they predict from; the converted model would predict differently",
    )
    _expect(decoder, "decoder_config.activation_function", ("relu",), "the FFN uses ReLU")
    require(
        decoder.d_model % decoder.decoder_attention_heads == 0,
        "decoder_config.decoder_attention_heads",
        decoder.decoder_attention_heads,
        f"must divide d_model = {decoder.d_model}",
    )


def _head_config(hf_config: Any, features: List[str]) -> Dict[str, Any]:
    decoder = hf_config.decoder_config
    require(
        hf_config.fpn_feature_size % 32 == 0,
        "fpn_feature_size",
        hf_config.fpn_feature_size,
        "GroupNorm(32) needs a multiple of 32",
    )
    return {
        "MODEL.META_ARCHITECTURE": "MaskFormer",
        "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": features,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": int(hf_config.num_labels),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": int(hf_config.fpn_feature_size),
        "MODEL.SEM_SEG_HEAD.MASK_DIM": int(hf_config.mask_feature_size),
        "MODEL.SEM_SEG_HEAD.NORM": "GN",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": features[-1],
        "MODEL.MASK_FORMER.HIDDEN_DIM": int(decoder.d_model),
        "MODEL.MASK_FORMER.NHEADS": int(decoder.decoder_attention_heads),
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD": int(decoder.decoder_ffn_dim),
        "MODEL.MASK_FORMER.ENC_LAYERS": 0,
        "MODEL.MASK_FORMER.DEC_LAYERS": int(decoder.decoder_layers),
        "MODEL.MASK_FORMER.PRE_NORM": False,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": int(decoder.num_queries),
        "MODEL.MASK_FORMER.DROPOUT": float(decoder.dropout),
        # HF projects only when the channels differ, as this project does by default.
        "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
        "MODEL.MASK_FORMER.DEEP_SUPERVISION": bool(hf_config.use_auxiliary_loss),
        "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": float(hf_config.no_object_weight),
        "MODEL.MASK_FORMER.CLASS_WEIGHT": float(hf_config.cross_entropy_weight),
        "MODEL.MASK_FORMER.MASK_WEIGHT": float(hf_config.mask_weight),
        "MODEL.MASK_FORMER.DICE_WEIGHT": float(hf_config.dice_weight),
        "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    }


def model_config(hf_config: Any) -> Dict[str, Any]:
    """
    The detectron2 config keys (dotted names -> plain values) that build the network of
    ``hf_config`` (a ``MaskFormerConfig``); raises :class:`UnsupportedCheckpointError`.
    """
    _expect(hf_config, "model_type", ("maskformer",), "only MaskFormer checkpoints convert")
    kind = _backbone_type(hf_config)
    _check_decoder(hf_config.decoder_config)
    features = backbone_feature_names(hf_config)
    backbone = hf_config.backbone_config
    keys = _swin_config(backbone) if kind in SWIN_TYPES else _resnet_config(backbone, features)
    keys.update(_head_config(hf_config, features))
    return keys


# Weights -------------------------------------------------------------------------------------

# A weight name is renamed in two steps. A *container* pattern splits an HF key (after its
# section prefix) into an index-carrying container and the rest; the rest's module path is
# looked up in the container's module map, and the parameter name is kept. A module mapped to
# (path, part) is the query (0), key (1) or value (2) slice of one fused projection; a target
# ending in "_" is joined to the parameter name without a dot (``in_proj_weight``).
Target = Union[str, Tuple[str, int]]
Container = Tuple["re.Pattern", Callable[["re.Match"], str], Mapping[str, Target]]


def _container(pattern: str, prefix: Union[str, Callable], modules: Mapping) -> Container:
    fixed = prefix if callable(prefix) else (lambda m: prefix)
    return re.compile(pattern + r"\.?(.*)$"), fixed, modules


_NORM_CONV = {"0": "", "1": "norm"}  # HF's (conv, norm[, ReLU]) sequences
_SWIN_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.self": "attn",  # relative_position_bias_table and _index
    "attention.self.query": ("attn.qkv", 0),
    "attention.self.key": ("attn.qkv", 1),
    "attention.self.value": ("attn.qkv", 2),
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_SWIN = [
    _container(
        r"model\.embeddings",
        "",
        {"patch_embeddings.projection": "patch_embed.proj", "norm": "patch_embed.norm"},
    ),
    _container(
        r"model\.encoder\.layers\.(\d+)\.blocks\.(\d+)",
        lambda m: f"layers.{m.group(1)}.blocks.{m.group(2)}.",
        _SWIN_BLOCK,
    ),
    _container(
        r"model\.encoder\.layers\.(\d+)\.downsample",
        lambda m: f"layers.{m.group(1)}.downsample.",
        {"reduction": "reduction", "norm": "norm"},
    ),
    _container(r"hidden_states_norms\.(\d+)", lambda m: f"norm{m.group(1)}.", {"": ""}),
]
_RESNET_BLOCK = {"shortcut.convolution": "shortcut", "shortcut.normalization": "shortcut.norm"}
for _k in range(3):
    _RESNET_BLOCK[f"layer.{_k}.convolution"] = f"conv{_k + 1}"
    _RESNET_BLOCK[f"layer.{_k}.normalization"] = f"conv{_k + 1}.norm"
_RESNET = [
    _container(r"embedder\.embedder", "stem.conv1.", {"convolution": "", "normalization": "norm"}),
    _container(
        r"encoder\.stages\.(\d+)\.layers\.(\d+)",
        lambda m: f"res{int(m.group(1)) + 2}.{m.group(2)}.",
        _RESNET_BLOCK,
    ),
]
_DECODER_LAYER = {
    "self_attn_layer_norm": "norm1",
    "encoder_attn_layer_norm": "norm2",
    "final_layer_norm": "norm3",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
}
for _hf_name, _name in (("self_attn", "self_attn"), ("encoder_attn", "multihead_attn")):
    for _part, _q in enumerate("qkv"):
        _DECODER_LAYER[f"{_hf_name}.{_q}_proj"] = (f"{_name}.in_proj_", _part)
    _DECODER_LAYER[f"{_hf_name}.o_proj"] = f"{_name}.out_proj"
_TRANSFORMER = [
    _container(
        r"decoder\.layers\.(\d+)",
        lambda m: f"transformer.decoder.layers.{m.group(1)}.",
        _DECODER_LAYER,
    ),
    _container(
        r"",
        "",
        {
            "queries_embedder": "query_embed",
            "input_projection": "input_proj",
            "decoder.layernorm": "transformer.decoder.norm",
        },
    ),
]
_HEADS = [
    _container(
        r"mask_embedder\.(\d+)\.0",
        lambda m: f"sem_seg_head.predictor.mask_embed.layers.{m.group(1)}.",
        {"": ""},
    ),
    _container(
        r"",
        "",
        {"class_predictor": "sem_seg_head.predictor.class_embed", "criterion": "criterion"},
    ),
]


def _pixel_decoder(num_levels: int) -> List[Container]:
    def level(m: "re.Match") -> int:
        return num_levels - 1 - int(m.group(1))  # fpn.layers run top-down: 0 is the coarsest

    return [
        _container(r"fpn\.stem", f"layer_{num_levels}.", _NORM_CONV),
        _container(r"fpn\.layers\.(\d+)\.proj", lambda m: f"adapter_{level(m)}.", _NORM_CONV),
        _container(r"fpn\.layers\.(\d+)\.block", lambda m: f"layer_{level(m)}.", _NORM_CONV),
        _container(r"", "", {"mask_projection": "mask_features"}),
    ]


def _sections(hf_config: Any) -> List[Tuple[str, str, List[Container]]]:
    """(HF prefix, this project's prefix, containers); the catch-all "" prefix comes last."""
    swin = hf_config.backbone_config.model_type in SWIN_TYPES
    levels = len(backbone_feature_names(hf_config))
    return [
        ("model.pixel_level_module.encoder.", "backbone.", _SWIN if swin else _RESNET),
        (
            "model.pixel_level_module.decoder.",
            "sem_seg_head.pixel_decoder.",
            _pixel_decoder(levels),
        ),
        ("model.transformer_module.", "sem_seg_head.predictor.", _TRANSFORMER),
        ("", "", _HEADS),
    ]


# Weights that feed nothing in HF's MaskFormer outputs: the Swin model's final LayerNorm (used by
# its classification pooler only) and BatchNorm batch counters (FrozenBatchNorm2d keeps none).
_IGNORED = (
    re.compile(r"model\.pixel_level_module\.encoder\.model\.layernorm\.(weight|bias)$"),
    re.compile(r".*\.num_batches_tracked$"),
)


def _join(target: str, param: str) -> str:
    if not target:
        return param
    return target + param if target.endswith("_") else f"{target}.{param}"


def rename_key(key: str, sections: Sequence) -> Optional[Tuple[str, Optional[int]]]:
    """This project's name of the HF weight ``key`` and its fused part, or None if unknown."""
    for hf_prefix, prefix, containers in sections:
        if not key.startswith(hf_prefix):
            continue
        rest = key[len(hf_prefix) :]
        for pattern, container_prefix, modules in containers:
            m = pattern.match(rest)
            if m is None:
                continue
            module, _, param = m.group(m.lastindex).rpartition(".")
            target = modules.get(module)
            if target is None:
                continue
            path, part = target if isinstance(target, tuple) else (target, None)
            return prefix + container_prefix(m) + _join(path, param), part
        return None
    return None


def _to_numpy(value: Any) -> np.ndarray:
    array = value.detach().cpu()
    if array.is_floating_point():
        array = array.float()
    return array.numpy()


def _fuse(parts: Dict[str, Dict[int, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Concatenate the query, key and value slices of each fused projection (in that order)."""
    fused = {}
    for key, slices in parts.items():
        missing = [name for i, name in enumerate(("query", "key", "value")) if i not in slices]
        if missing:
            raise UnsupportedCheckpointError(f"{key}: the checkpoint has no {missing} projection")
        fused[key] = np.concatenate([slices[i] for i in range(3)], axis=0)
    return fused


def _after_last_stage(key: str, last_stage: int) -> bool:
    # detectron2's ResNet builds no stage after its last output; HF computes it, unused.
    m = re.match(r"backbone\.res(\d)\.", key)
    return m is not None and int(m.group(1)) > last_stage


def convert_state_dict(
    state_dict: Mapping[str, Any], hf_config: Any
) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """
    Rename the weights of an HF ``MaskFormerForInstanceSegmentation`` to this project's
    ``MaskFormer``, as float32 (integer buffers keep their type) numpy arrays.

    Args:
        state_dict: the HF model's ``state_dict()`` (tensors).
        hf_config: its ``MaskFormerConfig``.
    Returns:
        (converted, ignored): the renamed weights, and the HF keys left out because nothing in
        HF's outputs depends on them (e.g. ResNet stages after the last output).
    Raises:
        UnsupportedCheckpointError: for HF weights with no counterpart here.
    """
    sections = _sections(hf_config)
    last_stage = int(backbone_feature_names(hf_config)[-1][len("res") :])
    converted: Dict[str, np.ndarray] = {}
    parts: Dict[str, Dict[int, np.ndarray]] = {}
    ignored, unknown = [], []
    for key, value in state_dict.items():
        if any(p.match(key) for p in _IGNORED):
            ignored.append(key)
            continue
        renamed = rename_key(key, sections)
        if renamed is None:
            unknown.append(key)
            continue
        new_key, part = renamed
        if _after_last_stage(new_key, last_stage):
            ignored.append(key)
            continue
        if part is None:
            if new_key in converted:
                raise UnsupportedCheckpointError(f"two HF weights map to {new_key} (one is {key})")
            converted[new_key] = _to_numpy(value)
        else:
            parts.setdefault(new_key, {})[part] = _to_numpy(value)
    if unknown:
        raise UnsupportedCheckpointError(
            f"{len(unknown)} HF weights have no counterpart in this project's MaskFormer: "
            f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    converted.update(_fuse(parts))
    return converted, ignored

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
tools/convert-hf-maskformer-to-d2.py: a tiny Hugging Face MaskFormer (random weights, perturbed
norms and BatchNorm statistics, no hub) converts into a config and weights whose model gives
HF's class and mask logits, for a Swin and a ResNet-50-layout backbone at two input sizes.
"""

import json
import pickle
import sys

import pytest
import torch

# The interop requirements (make setup installs them): a missing package fails, not skips.
import transformers
import yaml
from detectron2.modeling import build_model
from torch import nn

from mask_former import Predictor
from mask_former.checkpoint import restricted_pickle_load

SIZES = [(64, 96), (68, 100)]  # the second pads Swin windows and merges odd grids
CLASS_NAMES = ["wall", 'sky "blue"', "person", "car"]
# A processor whose mean/std differ from the defaults, so their conversion is exercised.
PROCESSOR = {
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "size": {"shortest_edge": 96, "longest_edge": 160},
    "ignore_index": 255,
}


def _decoder_config(**overrides):
    kwargs = dict(d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=64)
    kwargs.update(num_queries=6, dropout=0.0, **overrides)
    return transformers.MaskFormerDetrConfig(**kwargs)


def _swin_config(**overrides):
    kwargs = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3)
    kwargs.update(image_size=64, drop_path_rate=0.0, **overrides)
    return transformers.SwinConfig(**kwargs)


def _resnet50_config(**overrides):
    """ResNet-50 stage depths and bottlenecks (stride in the 3x3 conv), 1/8 of the width."""
    kwargs = dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3])
    kwargs.update(layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.ResNetConfig(**dict(kwargs, **overrides))


def _maskformer_config(backbone_config, decoder_config=None, **overrides):
    return transformers.MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=decoder_config or _decoder_config(),
        fpn_feature_size=32,
        mask_feature_size=24,
        id2label=dict(enumerate(CLASS_NAMES)),
        label2id={n: i for i, n in enumerate(CLASS_NAMES)},
        **overrides,
    )


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Move every norm, bias, BatchNorm statistic and position-bias table off its init value."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))
        if is_norm:
            module.weight.uniform_(0.5, 1.5, generator=g)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3, generator=g)
            module.running_var.uniform_(0.5, 2.0, generator=g)
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                p.uniform_(-0.3 if is_norm else -0.1, 0.3 if is_norm else 0.1, generator=g)
            elif name == "relative_position_bias_table":
                p.normal_(0.0, 0.5, generator=g)


def _hf_checkpoint(tmp_path, config, processor=None, seed=0):
    torch.manual_seed(seed)
    model = transformers.MaskFormerForInstanceSegmentation(config)
    _perturb(model, seed)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return model.eval(), folder


def _converted(tool, tmp_path, folder):
    weights, config = tmp_path / "out" / "model.pkl", tmp_path / "out" / "model.yaml"
    weights.parent.mkdir()
    tool("convert-hf-maskformer-to-d2").main(
        [str(folder), str(weights), "--config-output", str(config)]
    )
    return weights, config


def _ours(tool, config_path, weights_path):
    cfg = tool("convert-hf-maskformer-to-d2").load_written_config(str(config_path))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    data = restricted_pickle_load(str(weights_path))  # plain data only
    model.load_state_dict({k: torch.as_tensor(v) for k, v in data["model"].items()}, strict=True)
    return cfg, model, data


# MaskFormerImageProcessor's defaults, for checkpoints without preprocessor_config.json.
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _inputs(cfg, processor, size, seed):
    """One RGB image as HF's processor and as the converted config normalise it."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3) + size, generator=g).float()
    p = processor or IMAGENET
    hf_mean, hf_std = (torch.tensor(p[k]).view(3, 1, 1) for k in ("image_mean", "image_std"))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    ours = image if cfg.INPUT.FORMAT == "RGB" else image.flip(1)
    return (image / 255 - hf_mean) / hf_std, (ours - mean) / std


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return ((ours - reference).abs().max() / reference.abs().max().clamp(min=1.0)).item()


def _max_errors(hf_model, model, cfg, processor):
    errors = []
    for seed, size in enumerate(SIZES):
        hf_x, x = _inputs(cfg, processor, size, seed)
        with torch.no_grad():
            reference = hf_model(pixel_values=hf_x)
            out = model.sem_seg_head(model.backbone(x))
        assert out["pred_logits"].shape == (1, 6, len(CLASS_NAMES) + 1)
        assert out["pred_masks"].shape == (1, 6, -(-size[0] // 4), -(-size[1] // 4))
        errors.append(
            (
                _relative_error(out["pred_logits"], reference.class_queries_logits),
                _relative_error(out["pred_masks"], reference.masks_queries_logits),
            )
        )
    return errors


@pytest.mark.parametrize(
    "backbone, processor",
    [("swin", PROCESSOR), ("resnet50", None)],
    ids=["swin", "resnet50-default-processor"],
)
def test_converted_model_gives_hf_logits(tool, tmp_path, backbone, processor):
    backbone_config = _swin_config() if backbone == "swin" else _resnet50_config()
    hf_model, folder = _hf_checkpoint(tmp_path, _maskformer_config(backbone_config), processor)
    weights, config = _converted(tool, tmp_path, folder)
    cfg, model, data = _ours(tool, config, weights)

    errors = _max_errors(hf_model, model, cfg, processor)
    assert all(e <= 1e-4 for pair in errors for e in pair), errors
    assert data["class_names"] == CLASS_NAMES and data["matching_heuristics"] is False
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(CLASS_NAMES)
    assert cfg.MODEL.WEIGHTS == str(weights.resolve())


def test_written_files_are_plain_data_and_self_contained(tool, tmp_path):
    hf_model, folder = _hf_checkpoint(tmp_path, _maskformer_config(_swin_config()), PROCESSOR)
    weights, config = _converted(tool, tmp_path, folder)

    text = config.read_text()
    tree = yaml.safe_load(text)
    assert "_BASE_" not in tree and tree["VERSION"] == 2
    assert '#   1: "sky \\"blue\\""' in text  # class names as a comment block
    assert tree["MODEL"]["PIXEL_MEAN"] == pytest.approx([127.5, 102.0, 76.5])
    assert tree["MODEL"]["PIXEL_STD"] == pytest.approx([51.0, 63.75, 76.5])
    assert tree["INPUT"] == {"FORMAT": "RGB", "MIN_SIZE_TEST": 96, "MAX_SIZE_TEST": 160}
    assert tree["MODEL"]["SEM_SEG_HEAD"]["IGNORE_VALUE"] == 255

    data = restricted_pickle_load(str(weights))
    assert set(data) == {"model", "__author__", "matching_heuristics", "class_names", "metadata"}
    assert data["metadata"] == {"stuff_classes": CLASS_NAMES}  # the Trainer's format
    assert all(type(v).__name__ == "ndarray" for v in data["model"].values())
    with open(weights, "rb") as f:
        assert pickle.load(f)["class_names"] == CLASS_NAMES
    # The class names travel with the weights: a Predictor of the written config (whose test
    # dataset is not registered) names the classes as HF's id2label does.
    assert Predictor(config, device="cpu").class_names == CLASS_NAMES


# HF config field -> a MaskFormerConfig that sets it to something without a counterpart here.
UNSUPPORTED = {
    "decoder_config.auxiliary_loss": lambda: _maskformer_config(
        _swin_config(), _decoder_config(auxiliary_loss=True)
    ),
    "decoder_config.activation_function": lambda: _maskformer_config(
        _swin_config(), _decoder_config(activation_function="gelu")
    ),
    "backbone_config.use_absolute_embeddings": lambda: _maskformer_config(
        _swin_config(use_absolute_embeddings=True)
    ),
    "backbone_config.depths": lambda: _maskformer_config(_resnet50_config(depths=[1, 1, 1, 1])),
    "backbone_config.hidden_sizes": lambda: _maskformer_config(
        _resnet50_config(hidden_sizes=[32, 48, 64, 96])
    ),
    "backbone_config.downsample_in_first_stage": lambda: _maskformer_config(
        _resnet50_config(downsample_in_first_stage=True)
    ),
    "backbone_config.out_features": lambda: _maskformer_config(
        _resnet50_config(out_features=["stem", "stage4"])
    ),
    "backbone_config.model_type": lambda: _maskformer_config(
        transformers.ConvNextConfig(out_features=["stage4"])
    ),
}


@pytest.mark.parametrize("field", sorted(UNSUPPORTED))
def test_unsupported_configs_name_the_hf_field(tool, field):
    mapping = tool("convert-hf-maskformer-to-d2").mapping
    with pytest.raises(mapping.UnsupportedCheckpointError, match=field.replace(".", r"\.")):
        mapping.model_config(UNSUPPORTED[field]())


def test_refused_checkpoint_writes_nothing(tool, tmp_path):
    config = _maskformer_config(_swin_config(), _decoder_config(auxiliary_loss=True))
    _, folder = _hf_checkpoint(tmp_path, config)
    with pytest.raises(SystemExit, match=r"decoder_config\.auxiliary_loss"):
        _converted(tool, tmp_path, folder)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_transformers_says_what_to_install(tool, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(SystemExit, match=r"requirements/interop\.txt"):
        tool("convert-hf-maskformer-to-d2").load_hf_config(str(tmp_path))

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""tools/convert-pretrained-swin-model-to-d2.py: a Swin release checkpoint loads into the
project's D2SwinTransformer."""

import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from tools_testing import WithBackbone

from mask_former import get_mask_former_cfg
from tests.modeling.model_testing import TINY_SWIN, set_keys


def _tiny_swin():
    cfg = set_keys(get_mask_former_cfg(), {**TINY_SWIN, "MODEL.SWIN.DROP_PATH_RATE": 0.0})
    return build_backbone(cfg, ShapeSpec(channels=3))


def _release_checkpoint(path):
    """
    A checkpoint laid out like the official Swin release: the backbone's weights under their
    own names (no per-output norm0..3), plus the classifier's final norm and head.
    """
    torch.manual_seed(0)
    weights = {
        k: torch.randn(v.shape) if v.is_floating_point() else v.clone()
        for k, v in _tiny_swin().state_dict().items()
        if not k.startswith(("norm0", "norm1", "norm2", "norm3"))
    }
    weights["norm.weight"] = torch.randn(128)  # 8 x EMBED_DIM
    weights["norm.bias"] = torch.randn(128)
    weights["head.weight"] = torch.randn(1000, 128)
    weights["head.bias"] = torch.randn(1000)
    torch.save({"model": weights}, path)
    return weights


def test_release_checkpoint_loads_into_d2_swin(tool, tmp_path, capsys):
    convert = tool("convert-pretrained-swin-model-to-d2")
    weights = _release_checkpoint(tmp_path / "swin.pth")
    convert.main([str(tmp_path / "swin.pth"), str(tmp_path / "swin.pkl")])
    assert f"Wrote {len(weights)} weights" in capsys.readouterr().out

    with open(tmp_path / "swin.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "third_party" and data["matching_heuristics"] is True
    assert sorted(data["model"]) == sorted(weights)  # names kept as they are

    model = WithBackbone(_tiny_swin())
    DetectionCheckpointer(model).load(str(tmp_path / "swin.pkl"))
    state = model.backbone.state_dict()
    backbone_keys = [k for k in weights if not k.startswith(("head.", "norm."))]
    assert len(backbone_keys) == len(state) - 8  # everything but norm0..3 {weight, bias}
    for key in backbone_keys:
        assert torch.equal(state[key], weights[key]), key


def test_non_swin_checkpoint_is_rejected_with_its_name(tool, tmp_path):
    convert = tool("convert-pretrained-swin-model-to-d2")
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth does not look like a Swin Transformer"):
        convert.main([str(tmp_path / "resnet.pth"), str(tmp_path / "out.pkl")])
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "epoch": object()},
               tmp_path / "pickled.pth")  # fmt: skip
    with pytest.raises(ValueError, match="pickled.pth .*--trust-pickle"):
        convert.main([str(tmp_path / "pickled.pth"), str(tmp_path / "out.pkl")])
    assert not (tmp_path / "out.pkl").exists()

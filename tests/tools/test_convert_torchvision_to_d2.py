# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""tools/convert-torchvision-to-d2.py: a torchvision ResNet-18 becomes a Detectron2 ResNet."""

import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from tools_testing import WithBackbone
from torch import nn

from mask_former import get_mask_former_cfg
from tests.modeling.model_testing import TINY_RESNET18, set_keys


def _torchvision_resnet18_file(path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a misplaced buffer changes outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    torch.save(model.state_dict(), path)
    return model.eval()


def _d2_resnet18():
    # The tests' ResNet-18 with BatchNorm, as torchvision's has.
    cfg = set_keys(get_mask_former_cfg(), {**TINY_RESNET18, "MODEL.RESNETS.NORM": "BN"})
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_converted_resnet18_loads_with_no_missing_key_and_same_outputs(tool, tmp_path, capsys):
    convert = tool("convert-torchvision-to-d2")
    reference = _torchvision_resnet18_file(tmp_path / "r18.pth")
    convert.main([str(tmp_path / "r18.pth"), str(tmp_path / "R-18.pkl")])
    assert "fc.weight, fc.bias" in capsys.readouterr().out  # reported as not converted

    with open(tmp_path / "R-18.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    backbone = _d2_resnet18()
    # Zero missing and zero unexpected keys: the converted names are exactly the backbone's.
    assert set(data["model"]) == set(backbone.state_dict())
    # Spot checks of the renaming rules, written out by hand.
    sd = reference.state_dict()
    expected_pairs = {
        "stem.conv1.weight": "conv1.weight",
        "stem.conv1.norm.running_var": "bn1.running_var",
        "res2.1.conv2.norm.bias": "layer1.1.bn2.bias",
        "res3.0.shortcut.weight": "layer2.0.downsample.0.weight",
        "res5.0.shortcut.norm.running_mean": "layer4.0.downsample.1.running_mean",
    }
    for d2_name, tv_name in expected_pairs.items():
        assert torch.equal(torch.as_tensor(data["model"][d2_name]), sd[tv_name]), d2_name

    model = WithBackbone(backbone)
    DetectionCheckpointer(model).load(str(tmp_path / "R-18.pkl"))
    model.eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.backbone(image)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
        for stage, layer in zip(("res2", "res3", "res4", "res5"), (1, 2, 3, 4)):
            x = getattr(reference, f"layer{layer}")(x)
            torch.testing.assert_close(features[stage], x, rtol=1e-4, atol=1e-4)


def test_non_resnet_input_is_rejected_with_its_name(tool, tmp_path):
    convert = tool("convert-torchvision-to-d2")
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth does not look like a torchvision ResNet"):
        convert.main([str(tmp_path / "other.pth"), str(tmp_path / "out.pkl")])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read a PyTorch checkpoint from .*junk.pth"):
        convert.main([str(tmp_path / "junk.pth"), str(tmp_path / "out.pkl")])
    assert not (tmp_path / "out.pkl").exists()


def test_failed_write_leaves_no_output(tool, tmp_path, monkeypatch):
    convert = tool("convert-torchvision-to-d2")
    _torchvision_resnet18_file(tmp_path / "r18.pth")

    def broken_dump(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(convert.pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        convert.main([str(tmp_path / "r18.pth"), str(tmp_path / "R-18.pkl")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pth"]

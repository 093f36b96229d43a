# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Evaluator choice by ``evaluator_type``, semantic test-time augmentation, and ``setup``."""

import argparse
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.modeling import DatasetMapperTTA

from mask_former.engine import (
    SemanticSegmentorWithTTA,
    build_evaluator,
    get_mask_former_cfg,
    runs_on_cpu,
    setup,
)


def _register(evaluator_type, records):
    name = f"engine_test_{evaluator_type}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type,
        stuff_classes=["a", "b"],
        ignore_label=255,
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={2: 1},
    )
    return name


def _cfg(panoptic_on=False, semantic_on=True, output_dir="."):
    cfg = get_mask_former_cfg()
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic_on
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic_on
    cfg.OUTPUT_DIR = output_dir
    return cfg


def test_semantic_dataset_gets_semseg_evaluator(tmp_path):
    name = _register("sem_seg", [{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}])
    evaluator = build_evaluator(_cfg(output_dir=str(tmp_path)), name)
    assert isinstance(evaluator, SemSegEvaluator)
    assert evaluator._output_dir == str(tmp_path / "inference")


def test_panoptic_dataset_with_semantic_files_gets_pq_and_miou(tmp_path):
    sem_file = tmp_path / "a.png"
    sem_file.write_bytes(b"")
    records = [{"file_name": "a.jpg", "sem_seg_file_name": str(sem_file)}]
    name = _register("coco_panoptic_seg", records)
    evaluator = build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    assert isinstance(evaluator, DatasetEvaluators)
    kinds = sorted(type(e).__name__ for e in evaluator._evaluators)
    assert kinds == sorted([COCOPanopticEvaluator.__name__, SemSegEvaluator.__name__])
    # Without panoptic inference only mIoU remains.
    semantic_only = build_evaluator(_cfg(panoptic_on=False), name, str(tmp_path))
    assert isinstance(semantic_only, SemSegEvaluator)


def test_panoptic_dataset_without_semantic_files_gets_pq_only(tmp_path):
    records = [{"file_name": "a.jpg", "sem_seg_file_name": str(tmp_path / "missing.png")}]
    name = _register("ade20k_panoptic_seg", records)
    evaluator = build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    assert isinstance(evaluator, COCOPanopticEvaluator)
    with pytest.raises(NotImplementedError, match="nothing to evaluate"):
        build_evaluator(_cfg(panoptic_on=False), name, str(tmp_path))


def test_unknown_evaluator_type_names_the_dataset():
    name = _register("no_such_type", [])
    with pytest.raises(NotImplementedError, match=name):
        build_evaluator(_cfg(), name)


class _EchoModel(torch.nn.Module):
    """Returns channel 0 of the image resized to (height, width), as 2 "class scores"."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            self.calls.append(tuple(x["image"].shape[-2:]))
            image = x["image"][:1].float()[None]
            resized = torch.nn.functional.interpolate(image, size=(x["height"], x["width"]))[0]
            outputs.append({"sem_seg": torch.cat([resized, -resized])})
        return outputs


def test_tta_flips_back_and_averages():
    height, width = 8, 12
    ramp = torch.arange(width, dtype=torch.uint8).repeat(3, height, 1)  # (3, H, W), value = x
    model = _EchoModel()
    mapper = DatasetMapperTTA(min_sizes=[height], max_size=100, flip=True)
    tta = SemanticSegmentorWithTTA(model, tta_mapper=mapper, batch_size=1)
    (out,) = tta([{"image": ramp, "height": height, "width": width}])
    assert model.calls == [(height, width)] * 2  # original and flipped
    # A wrong flip-back would average x and (W - 1 - x) into a constant.
    expected = ramp[:1].float()
    torch.testing.assert_close(out["sem_seg"], torch.cat([expected, -expected]))


def test_tta_runs_every_scale_and_flip():
    model = _EchoModel()
    mapper = DatasetMapperTTA(min_sizes=[4, 8, 16], max_size=100, flip=True)
    tta = SemanticSegmentorWithTTA(model, tta_mapper=mapper, batch_size=4)
    image = torch.full((3, 8, 12), 7, dtype=torch.uint8)
    (out,) = tta([{"image": image, "height": 8, "width": 12}])
    assert sorted(model.calls) == sorted([(4, 6), (8, 12), (16, 24)] * 2)
    torch.testing.assert_close(out["sem_seg"][0], torch.full((8, 12), 7.0))


def test_setup_merges_file_and_opts_and_falls_back_to_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a CUDA machine
    config = tmp_path / "tiny.yaml"
    config.write_text("SOLVER:\n  BASE_LR: 0.5\nMODEL:\n  MASK_FORMER:\n    HIDDEN_DIM: 32\n")
    args = argparse.Namespace(
        config_file=str(config),
        opts=["SOLVER.MAX_ITER", "7", "OUTPUT_DIR", str(tmp_path / "o")],
        eval_only=False,
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    cfg = setup(args)
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 32
    assert cfg.is_frozen() and cfg.MODEL.DEVICE == "cpu" and runs_on_cpu(args)
    # The saved config is the one that runs, and the fallback is said in the run's log.
    assert "DEVICE: cpu" in (tmp_path / "o" / "config.yaml").read_text()
    assert "CUDA is not available: using the CPU" in (tmp_path / "o" / "log.txt").read_text()


def test_cpu_config_runs_on_cpu_even_with_cuda(tmp_path):
    config = tmp_path / "cpu.yaml"
    config.write_text("MODEL:\n  DEVICE: cpu\n")
    assert runs_on_cpu(argparse.Namespace(config_file=str(config), opts=[]))

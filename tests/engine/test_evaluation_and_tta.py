# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Evaluator choice by ``evaluator_type``, semantic test-time augmentation, and ``setup``."""

import argparse
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, SemSegEvaluator
from detectron2.modeling import DatasetMapperTTA
from e2e_helpers import train_args

from mask_former.engine import (
    SemanticSegmentorWithTTA,
    Trainer,
    build_evaluator,
    get_mask_former_cfg,
    runs_on_cpu,
    setup,
)


def _register(evaluator_type, records, **metadata):
    name = f"engine_test_{evaluator_type}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        evaluator_type=evaluator_type,
        stuff_classes=["a", "b"],
        ignore_label=255,
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={2: 1},
        **metadata,
    )
    return name


def _cfg(panoptic_on=False, semantic_on=True, output_dir="."):
    cfg = get_mask_former_cfg()
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic_on
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic_on
    cfg.OUTPUT_DIR = output_dir
    return cfg


def _semantic_records(tmp_path, exists=True):
    """One record whose semantic ground-truth file exists (or not)."""
    sem_file = tmp_path / ("a.png" if exists else "missing.png")
    if exists:
        sem_file.write_bytes(b"")
    return [{"file_name": "a.jpg", "sem_seg_file_name": str(sem_file)}]


def _panoptic_files(tmp_path):
    """Metadata naming an existing panoptic json and PNG folder."""
    (tmp_path / "panoptic").mkdir(exist_ok=True)
    (tmp_path / "panoptic.json").write_text("{}")
    return {
        "panoptic_json": str(tmp_path / "panoptic.json"),
        "panoptic_root": str(tmp_path / "panoptic"),
    }


def _kinds(evaluator):
    if isinstance(evaluator, DatasetEvaluators):
        return [type(e).__name__ for e in evaluator._evaluators]
    return [type(evaluator).__name__]


@pytest.mark.parametrize("evaluator_type", ["sem_seg", "ade20k_sem_seg"])
def test_semantic_dataset_gets_semseg_evaluator(tmp_path, evaluator_type):
    name = _register(evaluator_type, _semantic_records(tmp_path))
    evaluator = build_evaluator(_cfg(output_dir=str(tmp_path)), name)
    assert isinstance(evaluator, SemSegEvaluator)
    assert evaluator._output_dir == str(tmp_path / "inference")


def test_ade20k_panoptic_gets_miou_and_pq(tmp_path):
    name = _register(
        "ade20k_panoptic_seg", _semantic_records(tmp_path), **_panoptic_files(tmp_path)
    )
    evaluator = build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    assert _kinds(evaluator) == ["SemSegEvaluator", "COCOPanopticEvaluator"]


def test_coco_panoptic_gets_miou_only_where_the_dataset_has_semantic_ground_truth(tmp_path):
    panoptic = _panoptic_files(tmp_path)
    with_semantic = _register("coco_panoptic_seg", _semantic_records(tmp_path), **panoptic)
    evaluator = build_evaluator(_cfg(panoptic_on=True), with_semantic, str(tmp_path))
    assert _kinds(evaluator) == ["COCOPanopticEvaluator", "SemSegEvaluator"]
    # detectron2's "standard" COCO panoptic records name no semantic file: PQ only.
    panoptic_only = _register("coco_panoptic_seg", [{"file_name": "a.jpg"}], **panoptic)
    evaluator = build_evaluator(_cfg(panoptic_on=True), panoptic_only, str(tmp_path))
    assert _kinds(evaluator) == ["COCOPanopticEvaluator"]


def test_cityscapes_panoptic_gets_pq_and_cityscapes_miou(tmp_path):
    gt_dir = tmp_path / "gtFine"
    gt_dir.mkdir()
    name = _register("cityscapes_panoptic_seg", [], gt_dir=str(gt_dir), **_panoptic_files(tmp_path))
    evaluator = build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    assert _kinds(evaluator) == ["COCOPanopticEvaluator", "CityscapesSemSegEvaluator"]


@pytest.mark.parametrize("evaluator_type", ["ade20k_panoptic_seg", "coco_panoptic_seg"])
def test_missing_semantic_file_is_an_error_naming_dataset_evaluator_and_file(
    tmp_path, evaluator_type
):
    records = _semantic_records(tmp_path, exists=False)
    name = _register(evaluator_type, records, **_panoptic_files(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    for part in (name, "SemSegEvaluator", "sem_seg_file_name", "missing.png"):
        assert part in str(error.value)


def test_missing_panoptic_json_is_an_error_naming_dataset_evaluator_and_key(tmp_path):
    files = dict(_panoptic_files(tmp_path), panoptic_json=str(tmp_path / "no.json"))
    name = _register("ade20k_panoptic_seg", _semantic_records(tmp_path), **files)
    with pytest.raises(FileNotFoundError) as error:
        build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path))
    for part in (name, "COCOPanopticEvaluator", "panoptic_json", "no.json"):
        assert part in str(error.value)


@pytest.mark.parametrize(
    "evaluator_type, flags, evaluator, flag",
    [
        ("ade20k_panoptic_seg", (False, True), "COCOPanopticEvaluator", "PANOPTIC_ON"),
        ("ade20k_panoptic_seg", (True, False), "SemSegEvaluator", "SEMANTIC_ON"),
        ("coco_panoptic_seg", (False, True), "COCOPanopticEvaluator", "PANOPTIC_ON"),
        ("coco_panoptic_seg", (True, False), "SemSegEvaluator", "SEMANTIC_ON"),
        ("cityscapes_panoptic_seg", (True, False), "CityscapesSemSegEvaluator", "SEMANTIC_ON"),
        ("sem_seg", (False, False), "SemSegEvaluator", "SEMANTIC_ON"),
    ],
)
def test_disabled_model_output_is_an_error_naming_dataset_evaluator_and_flag(
    tmp_path, evaluator_type, flags, evaluator, flag
):
    gt_dir = tmp_path / "gtFine"
    gt_dir.mkdir()
    metadata = dict(_panoptic_files(tmp_path), gt_dir=str(gt_dir))
    name = _register(evaluator_type, _semantic_records(tmp_path), **metadata)
    panoptic_on, semantic_on = flags
    # Not NotImplementedError: DefaultTrainer.test would turn it into "No evaluator found".
    with pytest.raises(ValueError) as error:
        build_evaluator(_cfg(panoptic_on, semantic_on), name, str(tmp_path))
    for part in (name, evaluator, f"MODEL.MASK_FORMER.TEST.{flag}"):
        assert part in str(error.value)


def test_trainer_test_fails_instead_of_skipping_the_dataset(tmp_path):
    # A panoptic dataset whose semantic files are missing, evaluated without panoptic outputs:
    # every metric would be lost, so Trainer.test must not go on with "No evaluator found".
    records = _semantic_records(tmp_path, exists=False)
    name = _register("ade20k_panoptic_seg", records, **_panoptic_files(tmp_path))
    cfg = _cfg(panoptic_on=False, output_dir=str(tmp_path))
    cfg.DATASETS.TEST, cfg.DATALOADER.NUM_WORKERS = (name,), 0
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2  # as the dataset: the test loader checks it first
    with pytest.raises(ValueError, match="PANOPTIC_ON"):
        Trainer.test(cfg, torch.nn.Identity())


def test_semantic_tasks_select_the_semantic_evaluators(tmp_path):
    # What test-time augmentation uses: its model gives only "sem_seg".
    name = _register(
        "ade20k_panoptic_seg", _semantic_records(tmp_path), **_panoptic_files(tmp_path)
    )
    evaluator = build_evaluator(_cfg(panoptic_on=True), name, str(tmp_path), tasks=("sem_seg",))
    assert _kinds(evaluator) == ["SemSegEvaluator"]
    panoptic_only = _register(
        "coco_panoptic_seg", [{"file_name": "a.jpg"}], **_panoptic_files(tmp_path)
    )
    with pytest.raises(ValueError, match=panoptic_only):
        build_evaluator(_cfg(panoptic_on=True), panoptic_only, str(tmp_path), tasks=("sem_seg",))


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
    args = train_args(str(config), "SOLVER.MAX_ITER", "7", "OUTPUT_DIR", str(tmp_path / "o"))
    cfg = setup(args)
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 32
    assert cfg.is_frozen() and cfg.MODEL.DEVICE == "cpu" and runs_on_cpu(args)
    # The saved config is the one that runs, and the fallback is said in the run's log.
    assert "DEVICE: cpu" in (tmp_path / "o" / "config.yaml").read_text()
    assert "CUDA is not available: using the CPU" in (tmp_path / "o" / "log.txt").read_text()


@pytest.mark.parametrize("cuda", [True, False], ids=["with_cuda", "without_cuda"])
def test_runs_on_cpu_for_a_cpu_config_or_without_cuda(tmp_path, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # both branches anywhere
    config = tmp_path / "cpu.yaml"
    config.write_text("MODEL:\n  DEVICE: cpu\n")
    assert runs_on_cpu(argparse.Namespace(config_file=str(config), opts=[]))
    # A CUDA config (detectron2's default device) uses the GPUs only where there are some.
    on_gpu = argparse.Namespace(config_file="", opts=["MODEL.DEVICE", "cuda"])
    assert runs_on_cpu(on_gpu) is not cuda

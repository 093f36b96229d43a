# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
End to end on a tiny shapes dataset (4 train / 2 val images): ``train_net.py`` training with
evaluation, ``--eval-only``, ``--resume``, and 2-process CPU (gloo) training.
"""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer
from e2e_helpers import (
    VAL,
    make_tiny_datasets,
    read_metrics,
    register_and_run,
    tiny_cfg,
    train_args,
    write_cfg,
)
from PIL import Image

import train_net
from mask_former.data import MaskFormerPanopticDatasetMapper
from mask_former.engine import Trainer, launch
from mask_former.engine.trainer import BFloat16Trainer, _step_trainer_class


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> str:
    return make_tiny_datasets(str(tmp_path_factory.mktemp("datasets")))


def test_train_with_eval_then_eval_only_gives_the_same_metrics(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    config = write_cfg(tiny_cfg(out), tmp_path / "tiny.yaml")
    trained = train_net.main(train_args(config))
    assert set(trained) == {"sem_seg", "panoptic_seg"}
    semantic_keys = {"mIoU", "fwIoU", "mACC", "pACC", "IoU-circle", "IoU-blotches"}
    assert semantic_keys <= set(trained["sem_seg"])
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(trained["panoptic_seg"])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    # The same numbers were logged after the last iteration (storage iteration = MAX_ITER).
    last = read_metrics(out)[-1]
    assert last["iteration"] == 2
    assert last["sem_seg/mIoU"] == pytest.approx(trained["sem_seg"]["mIoU"])

    weights = os.path.join(out, "model_final.pth")
    evaluated = train_net.main(
        train_args(
            config,
            "MODEL.WEIGHTS",
            weights,
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(48, 64)",
            "TEST.AUG.MAX_SIZE",
            "128",
            eval_only=True,
        )
    )
    for task in ("sem_seg", "panoptic_seg"):
        assert evaluated[task].keys() == trained[task].keys()
        for key, value in trained[task].items():
            assert evaluated[task][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (task, key)
    # Test-time augmentation adds semantic results only.
    assert {k for k in evaluated if k.endswith("_TTA")} == {"sem_seg_TTA"}
    assert set(evaluated["sem_seg_TTA"]) == set(trained["sem_seg"])


def test_resume_continues_at_the_next_iteration(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_cfg(
        out, **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2, "DATASETS.TEST": "()"}
    )
    train_net.main(train_args(write_cfg(cfg, tmp_path / "a.yaml")))
    # Pretend the run was interrupted after its checkpoint of iteration 1 (iterations 0, 1).
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    saved = torch.load(os.path.join(out, "model_0000001.pth"), map_location="cpu")
    assert saved["iteration"] == 1

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    assert trainer.scheduler.last_epoch == 2  # the LR schedule continues too
    # Resumed, not re-initialised: the weights are those of the checkpoint.
    state = trainer.model.state_dict()
    for name, value in saved["model"].items():
        torch.testing.assert_close(state[name], value, msg=name)
    trainer.train()
    assert trainer.iter == 4  # iterations 2 and 3 ran

    # The same through the command line.
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    train_net.main(train_args(write_cfg(cfg, tmp_path / "a.yaml"), resume=True))
    with open(os.path.join(out, "log.txt")) as f:
        assert "Starting training from iteration 2" in f.read()


def _semantic_metrics_of_saved_predictions(inference_dir: str, dataset: str) -> dict:
    """
    pACC, mIoU and each class's IoU (in %), computed here from SemSegEvaluator's saved
    predictions (one RLE per image and predicted class) and the ground-truth PNGs: the
    definitions of detectron2's SemSegEvaluator, written out independently of it.
    """
    meta = MetadataCatalog.get(dataset)
    contiguous = meta.stuff_dataset_id_to_contiguous_id
    with open(os.path.join(inference_dir, "sem_seg_predictions.json")) as f:
        predictions = json.load(f)
    records = {r["file_name"]: r for r in DatasetCatalog.get(dataset)}
    assert {p["file_name"] for p in predictions} == set(records)  # every image, once gathered
    num_classes = len(meta.stuff_classes)
    tp, gt_area, pred_area = (np.zeros(num_classes) for _ in range(3))
    for file_name, record in records.items():
        gt = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        pred = np.full(gt.shape, -1)
        for p in predictions:
            if p["file_name"] == file_name:
                mask = mask_util.decode(p["segmentation"]).astype(bool)
                assert (pred[mask] == -1).all()  # one class per pixel
                pred[mask] = contiguous[p["category_id"]]
        assert (pred >= 0).all()
        valid = gt != meta.ignore_label
        for c in range(num_classes):
            tp[c] += np.sum(valid & (gt == c) & (pred == c))
            gt_area[c] += np.sum(valid & (gt == c))
            pred_area[c] += np.sum(valid & (pred == c))
    present = gt_area > 0
    iou = tp[present] / (gt_area + pred_area - tp)[present]
    result = {"pACC": 100 * tp.sum() / gt_area.sum()}
    # Classes that are only predicted count as IoU 0 in the mean.
    result["mIoU"] = 100 * iou.sum() / np.sum(present | (pred_area > 0))
    for name, value in zip(np.asarray(meta.stuff_classes)[present], iou):
        result[f"IoU-{name}"] = 100 * value
    return result


def test_two_cpu_processes_train_and_evaluate(datasets_root, tmp_path):
    """
    Two gloo processes train and then evaluate, each on one of the 2 validation images. The
    logged metrics must be those of both images: one process evaluating the run's final
    weights on the same images gets the same numbers, and the semantic ones also follow from
    the run's saved predictions.
    """
    out = str(tmp_path / "run")
    # A larger step than the default's, so that 3 iterations give segments that match.
    opts = {"SOLVER.MAX_ITER": 3, "SOLVER.BASE_LR": 1e-3, "SOLVER.CLIP_GRADIENTS.ENABLED": False}
    config = write_cfg(tiny_cfg(out, **opts), tmp_path / "tiny.yaml")
    args = train_args(config, num_gpus=2)
    launch(
        register_and_run,
        2,
        dist_url="auto",
        args=(datasets_root, train_net.main, args),
        use_cpu=True,
    )
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "World size: 2" in log
    last = read_metrics(out)[-1]
    assert last["iteration"] == 3  # the evaluation after the 3 iterations
    logged = {k: v for k, v in last.items() if k.startswith(("sem_seg/", "panoptic_seg/"))}

    single = train_net.main(
        train_args(
            config,
            "MODEL.WEIGHTS",
            os.path.join(out, "model_final.pth"),
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            eval_only=True,
        )
    )
    expected = {f"{task}/{k}": v for task, metrics in single.items() for k, v in metrics.items()}
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key

    independent = _semantic_metrics_of_saved_predictions(os.path.join(out, "inference"), VAL)
    for key, value in independent.items():
        assert logged[f"sem_seg/{key}"] == pytest.approx(value, abs=1e-6), key
    # What no evaluator can give: a panoptic quality above its segmentation or recognition
    # quality (PQ = SQ x RQ per class), or percentages outside [0, 100].
    for suffix in ("", "_th", "_st"):
        pq, sq, rq = (logged[f"panoptic_seg/{m}{suffix}"] for m in ("PQ", "SQ", "RQ"))
        assert 0 <= pq <= min(sq, rq) + 1e-6 and max(sq, rq) <= 100, suffix
    assert 0 < logged["sem_seg/pACC"] <= 100 and logged["panoptic_seg/PQ"] > 0, logged


class _FixedOrderTrainer(Trainer):
    """Batches of the training images in file order, no augmentation, padded to 256 x 256."""

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
        mapper = MaskFormerPanopticDatasetMapper(
            is_train=True,
            augmentations=[],
            image_format="RGB",
            ignore_label=255,
            size_divisibility=256,
        )
        return build_detection_train_loader(
            dataset=dataset,
            mapper=mapper,
            sampler=TrainingSampler(len(dataset), shuffle=False),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=0,
        )


def _first_iteration(cfg) -> Trainer:
    torch.manual_seed(cfg.SEED)  # the same initial weights on rank 0 as in the 1-process run
    trainer = _FixedOrderTrainer(cfg)
    trainer.train()
    return trainer


def test_distributed_mask_losses_equal_single_process(datasets_root, tmp_path):
    """
    Images 0..3 in one process, or 0, 2 (rank 0) and 1, 3 (rank 1): loss_mask and loss_dice are
    normalised by the number of masks averaged over processes and loss_ce by the class weights of
    all processes' queries, so the mean over processes (what detectron2 logs) equals the
    1-process value for every loss (tests/modeling/test_criterion_distributed.py checks the
    gradients too).
    """
    results = {}
    for world_size in (1, 2):
        out = str(tmp_path / f"world{world_size}")
        cfg = tiny_cfg(
            out, **{"SOLVER.IMS_PER_BATCH": 4, "SOLVER.MAX_ITER": 1, "DATASETS.TEST": "()"}
        )
        launch(
            register_and_run,
            world_size,
            dist_url="auto",
            args=(datasets_root, _first_iteration, cfg),
            use_cpu=True,
        )
        (record,) = read_metrics(out)
        results[world_size] = record
    keys = ("loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0")
    for key in keys + ("total_loss",):
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-5), key
    assert results[1]["loss_mask"] > 0 and results[1]["loss_dice"] > 0


def _first_iteration_losses(cfg):
    """The trainer after one fixed-order iteration, and that iteration's logged metrics."""
    trainer = _first_iteration(cfg)
    (record,) = read_metrics(cfg.OUTPUT_DIR)
    return trainer, record


def test_amp_on_cpu_trains_in_bfloat16_with_float32_losses(datasets_root, tmp_path):
    """
    SOLVER.AMP.ENABLED on the CPU: convolutions run in bfloat16 on NHWC weights, the logged
    first-iteration losses (float32, from the same weights and images) stay within bfloat16's
    precision of the float32 run's, and the weights stay float32. bfloat16 is forced
    (SOLVER.AMP.CPU_PRECISION), so the test means the same on CPUs without native bfloat16.
    """
    opts = {"SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 1, "DATASETS.TEST": "()"}
    _, fp32 = _first_iteration_losses(tiny_cfg(str(tmp_path / "fp32"), **opts))
    trainer, bf16 = _first_iteration_losses(
        tiny_cfg(
            str(tmp_path / "bf16"),
            **opts,
            **{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.CPU_PRECISION": "bfloat16"},
        )
    )
    assert isinstance(trainer._trainer, BFloat16Trainer)
    model = trainer.model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    stem = model.backbone.stem.conv1.weight
    assert stem.is_contiguous(memory_format=torch.channels_last)

    dtypes = []
    model.backbone.res2.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert dtypes == [torch.bfloat16]
    assert all(v.dtype == torch.float32 for v in losses.values())

    for key in ("loss_ce", "loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.05), key
    assert bf16["loss_mask"] != fp32["loss_mask"]  # bfloat16 did run


def test_amp_without_a_mixed_precision_for_the_device_is_a_clear_error(tmp_path):
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.AMP.ENABLED": True, "MODEL.DEVICE": "mps"})
    with pytest.raises(ValueError, match="no mixed precision for MODEL.DEVICE 'mps'"):
        _step_trainer_class(cfg)
    cfg.merge_from_list(["MODEL.DEVICE", "cuda:1"])
    assert _step_trainer_class(cfg) is AMPTrainer
    cfg.merge_from_list(["SOLVER.AMP.ENABLED", False])
    assert _step_trainer_class(cfg) is SimpleTrainer


class _PoisonAtIteration(HookBase):
    """Before iteration ``at``: snapshot the weights, then make the input normalisation divide
    by zero (a buffer, not a weight), so that the losses of that iteration are non-finite."""

    def __init__(self, at: int):
        self.at, self.snapshot = at, None

    def before_step(self):
        if self.trainer.iter == self.at:
            model = self.trainer.model
            self.snapshot = {k: v.clone() for k, v in model.state_dict().items()}
            model.pixel_std.zero_()


def test_non_finite_loss_stops_before_weights_or_checkpoints_change(datasets_root, tmp_path):
    out = tmp_path / "nan"
    cfg = tiny_cfg(str(out), **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 1})
    trainer = Trainer(cfg)
    poison = _PoisonAtIteration(2)
    trainer.register_hooks([poison])
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 2: loss_ce"):
        trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in poison.snapshot.items())
    # Checkpoints of the finite iterations 0 and 1 only; none from the failed one.
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000000.pth",
        "model_0000001.pth",
    ]


def test_check_finite_losses_names_each_bad_loss():
    from mask_former.modeling.meta_arch import check_finite_losses

    ok = {"loss_ce": torch.tensor(1.0), "loss_mask": torch.tensor(0.5)}
    assert check_finite_losses(ok) is ok
    bad = {"loss_ce": torch.tensor(1.0), "loss_dice": torch.tensor(float("inf"))}
    bad["loss_mask"] = torch.tensor(float("nan"))
    with pytest.raises(
        FloatingPointError, match=r"outside a training loop: loss_dice = inf, loss_mask = nan"
    ):
        check_finite_losses(bad)


def _last_losses_and_weights(out_dir: str):
    keys = ("total_loss", "loss_ce", "loss_mask", "loss_dice", "loss_ce_0")
    (last,) = [row for row in read_metrics(out_dir) if "total_loss" in row]
    weights = torch.load(os.path.join(out_dir, "model_final.pth"), map_location="cpu")["model"]
    return [last[k] for k in keys], weights


def test_fixed_seed_gives_identical_losses_and_is_logged(datasets_root, tmp_path):
    runs = []
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        out = str(tmp_path / name)
        cfg = tiny_cfg(out, **{"SOLVER.MAX_ITER": 3, "DATASETS.TEST": "()", "SEED": seed})
        cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.BASE_LR", 1e-3])
        train_net.main(train_args(write_cfg(cfg, tmp_path / f"{name}.yaml")))
        runs.append(_last_losses_and_weights(out))
        with open(os.path.join(out, "log.txt")) as f:
            assert f"Seeded the random number generators with {seed}" in f.read()
    (losses_a, weights_a), (losses_b, weights_b), (losses_c, _) = runs
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert losses_c != losses_a  # the seed decides: the equality above is not trivial

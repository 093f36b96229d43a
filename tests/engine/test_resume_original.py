# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``--resume`` from an output directory written by the original MaskFormer, whose optimizer had
one parameter group per parameter (and whose LR scheduler has one base LR per parameter), in
the checkpoint layouts of detectron2 <= 0.5, 0.6 and later; and resume of the project's own
checkpoints, which now carry the optimizer state.
"""

import logging
import os

import pytest
import torch
from detectron2.data.datasets import load_sem_seg
from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR
from e2e_helpers import tiny_cfg

from mask_former.checkpoint import ResumeState, TrainingCheckpointer
from mask_former.data.datasets import register_dataset
from mask_former.data.datasets.shapes import shapes_metadata
from mask_former.data.shapes_generator import SHAPES_SPLITS, generate_split, shapes_dir
from mask_former.engine import Trainer

TRAIN = "resume_test_shapes_sem_seg_train"
BASE_LR, MAX_ITER, SAVED_ITER = 1e-3, 4, 2  # the checkpoint of iteration 2; 3 is left to run


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("datasets"))
    base = shapes_dir(root)
    generate_split(base, "train", seed=SHAPES_SPLITS["train"][0], num_images=2)
    images, labels = os.path.join(base, "images", "train"), os.path.join(base, "sem_seg", "train")
    register_dataset(
        TRAIN,
        lambda: load_sem_seg(labels, images, gt_ext="png", image_ext="jpg"),
        {**shapes_metadata(), "image_root": images, "evaluator_type": "sem_seg"},
    )
    return root


def _cfg(out_dir: str):
    """The tiny MaskFormer of the end-to-end tests on TRAIN, frozen stem and res2, no test set."""
    return tiny_cfg(
        out_dir,
        **{
            "MODEL.BACKBONE.FREEZE_AT": 2,  # stem and res2 frozen: not in the optimizer
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": False,
            "DATASETS.TRAIN": (TRAIN,),
            "DATASETS.TEST": (),
            "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic",
            "SOLVER.MAX_ITER": MAX_ITER,
            "SOLVER.BASE_LR": BASE_LR,
            "SOLVER.CLIP_GRADIENTS.ENABLED": False,
        },
    )


def _original_optimizer(model: torch.nn.Module):
    """
    The original MaskFormer's optimizer: one AdamW group per trainable parameter, visiting the
    modules in ``named_modules()`` order and each module's own parameters, each parameter once;
    backbone LRs are scaled by 0.1. Every parameter gets a made-up state.

    Returns:
        the optimizer, and {parameter name: its state}.
    """
    groups, names, seen = [], [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr = BASE_LR * (0.1 if "backbone" in module_name else 1.0)
            groups.append({"params": [param], "lr": lr, "weight_decay": 1e-4})
            names.append(f"{module_name}.{param_name}")
    optimizer = torch.optim.AdamW(groups, lr=BASE_LR)
    generator = torch.Generator().manual_seed(0)
    states = {}
    for name, group in zip(names, optimizer.param_groups):
        param = group["params"][0]
        state = {
            "step": torch.tensor(float(SAVED_ITER + 1)),
            "exp_avg": torch.randn(param.shape, generator=generator),
            "exp_avg_sq": torch.rand(param.shape, generator=generator),
        }
        optimizer.state[param] = state
        states[name] = state
    return optimizer, states


def _original_checkpoint(model: torch.nn.Module, layout: str):
    """A checkpoint of iteration SAVED_ITER as the original wrote it, in ``layout``."""
    optimizer, states = _original_optimizer(model)
    scheduler = WarmupPolyLR(optimizer, MAX_ITER, warmup_iters=0, power=0.9)
    scheduler_state = dict(
        scheduler.state_dict(), last_epoch=SAVED_ITER + 1, _step_count=SAVED_ITER + 2
    )
    # Weights of a model initialised apart from the resuming trainer's.
    checkpoint = {"model": model.state_dict(), "iteration": SAVED_ITER}
    trainer_state = {"iteration": SAVED_ITER, "hooks": {"LRScheduler": scheduler_state}}
    if layout == "detectron2<=0.5":
        checkpoint.update(optimizer=optimizer.state_dict(), scheduler=scheduler_state)
    elif layout == "detectron2>0.6":
        optimizer_state = {"iteration": SAVED_ITER, "optimizer": optimizer.state_dict()}
        checkpoint["trainer"] = dict(trainer_state, _trainer=optimizer_state)
    else:  # detectron2 0.6 saved no optimizer state
        checkpoint["trainer"] = trainer_state
    assert len(scheduler_state["base_lrs"]) == len(states) > 10
    return checkpoint, states


def _write(out_dir: str, checkpoint) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model_0000002.pth")
    torch.save(checkpoint, path)
    with open(os.path.join(out_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    return path


@pytest.fixture
def checkpoint_log(caplog):
    # The "mask_former" logger may not propagate (detectron2's setup_logger).
    logger = logging.getLogger("mask_former.checkpoint")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="mask_former.checkpoint")
    yield caplog
    logger.removeHandler(caplog.handler)


def _assert_resumed_schedule(trainer: Trainer) -> None:
    """Iteration, scheduler and learning rates continue after iteration SAVED_ITER."""
    assert trainer.start_iter == SAVED_ITER + 1
    scheduler, groups = trainer.scheduler, trainer.optimizer.param_groups
    assert scheduler.last_epoch == SAVED_ITER + 1
    assert scheduler.base_lrs == [g["initial_lr"] for g in groups]
    factor = (1 - (SAVED_ITER + 1) / MAX_ITER) ** 0.9
    assert sorted({g["initial_lr"] for g in groups}) == pytest.approx([0.1 * BASE_LR, BASE_LR])
    for group in groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * factor)


def _resume(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    return trainer


@pytest.mark.parametrize("layout", ["detectron2<=0.5", "detectron2>0.6"])
def test_original_optimizer_state_is_mapped_onto_the_merged_groups(
    datasets_root, tmp_path, layout, checkpoint_log
):
    cfg = _cfg(str(tmp_path / "run"))
    checkpoint, states = _original_checkpoint(Trainer.build_model(cfg), layout)
    _write(cfg.OUTPUT_DIR, checkpoint)

    trainer = _resume(cfg)
    _assert_resumed_schedule(trainer)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint["model"][name], msg=name)
    params = dict(trainer.model.named_parameters())
    assert len(trainer.optimizer.param_groups) < len(states)  # merged groups
    for name, saved in states.items():
        state = trainer.optimizer.state[params[name]]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[key], saved[key], msg=f"{name} {key}")
    assert "one group per parameter" in checkpoint_log.text
    trainer.train()  # iteration 3: the scheduler and optimizer step
    assert trainer.iter == MAX_ITER


def test_original_checkpoint_without_optimizer_state_starts_a_fresh_optimizer(
    datasets_root, tmp_path, checkpoint_log
):
    cfg = _cfg(str(tmp_path / "run"))
    checkpoint, _ = _original_checkpoint(Trainer.build_model(cfg), "detectron2==0.6")
    path = _write(cfg.OUTPUT_DIR, checkpoint)

    trainer = _resume(cfg)
    _assert_resumed_schedule(trainer)
    assert not trainer.optimizer.state
    assert f"{path} holds no optimizer state" in checkpoint_log.text
    trainer.train()
    assert trainer.iter == MAX_ITER


def test_optimizer_state_that_does_not_fit_starts_fresh_with_a_warning(
    datasets_root, tmp_path, checkpoint_log
):
    cfg = _cfg(str(tmp_path / "run"))
    checkpoint, _ = _original_checkpoint(Trainer.build_model(cfg), "detectron2<=0.5")
    # Swap the states of two parameters of different shapes: the order is not the model's.
    state = checkpoint["optimizer"]["state"]
    state[0], state[1] = state[1], state[0]
    path = _write(cfg.OUTPUT_DIR, checkpoint)

    trainer = _resume(cfg)
    _assert_resumed_schedule(trainer)
    assert not trainer.optimizer.state
    warnings = [r.getMessage() for r in checkpoint_log.records if r.levelno == logging.WARNING]
    assert any(path in m and "starts fresh" in m for m in warnings), warnings
    trainer.scheduler.step()  # one LR per group of this optimizer
    assert trainer.scheduler.last_epoch == SAVED_ITER + 2


def test_own_checkpoint_resumes_the_optimizer_state(datasets_root, tmp_path):
    cfg = _cfg(str(tmp_path / "run"))
    first = Trainer(cfg)
    for param in first.model.parameters():
        param.grad = torch.ones_like(param)
    first.optimizer.step()
    first.checkpointer.save("model_0000000", iteration=0)  # as the periodic checkpointer does
    saved = {p: {k: v.clone() for k, v in s.items()} for p, s in first.optimizer.state.items()}
    assert saved

    second = _resume(cfg)
    # The trainer's own load_state_dict takes the same way in (fit, then apply).
    third = Trainer(_cfg(str(tmp_path / "other")))
    third.load_state_dict(first.state_dict())
    for resumed in (second, third):
        assert resumed.start_iter == 1
        params = dict(resumed.model.named_parameters())
        for name, param in first.model.named_parameters():
            if param in saved:
                state = resumed.optimizer.state[params[name]]
                torch.testing.assert_close(state["exp_avg"], saved[param]["exp_avg"], msg=name)


class _NeverLoaded:
    """A checkpointable "trainer" that the checkpointer saves but must never load into."""

    def state_dict(self):
        return {"iteration": 7}

    def load_state_dict(self, state):
        raise AssertionError("the checkpointer called back into the trainer")


def test_checkpointer_returns_a_fitted_resume_state_without_loading_the_trainer(tmp_path):
    torch.manual_seed(0)
    saved_model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    original = torch.optim.AdamW([{"params": [p]} for p in saved_model.parameters()], lr=0.1)
    saved_model(torch.ones(1, 3)).sum().backward()
    original.step()
    scheduler_state = {"base_lrs": [0.1] * 4, "last_epoch": 5, "_last_lr": [0.05] * 4}
    legacy = {"model": saved_model.state_dict(), "iteration": 4}  # detectron2 <= 0.5 layout
    legacy.update(optimizer=original.state_dict(), scheduler=scheduler_state)
    torch.save(legacy, tmp_path / "model_0000004.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)  # one merged group
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    checkpointer = TrainingCheckpointer(model, str(tmp_path), trainer=_NeverLoaded())
    state = checkpointer.resume(optimizer, scheduler)

    assert isinstance(state, ResumeState) and state.iteration == 4
    assert state.path == str(tmp_path / "model_0000004.pth")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved_model.state_dict()[name], msg=name)
    scheduler_saved = state.hooks["LRScheduler"]  # one base LR per group of this optimizer
    assert scheduler_saved["base_lrs"] == [0.1] and "_last_lr" not in scheduler_saved
    assert state.lr_from_scheduler and len(state.optimizer["param_groups"]) == 1
    saved_params = list(saved_model.parameters())
    for index, param in enumerate(saved_params):  # this optimizer's indices: the model's order
        saved_avg = original.state[param]["exp_avg"]
        torch.testing.assert_close(state.optimizer["state"][index]["exp_avg"], saved_avg)
    assert state.rng is None and state.sampler_seed is None and state.history == {}
    assert not optimizer.state  # nothing applied: applying is the trainer's job
    # Saving still writes the trainer's state; an empty directory resumes nothing.
    checkpointer.save("model_0000007")
    assert torch.load(tmp_path / "model_0000007.pth", weights_only=True)["trainer"] == {
        "iteration": 7
    }
    empty = TrainingCheckpointer(model, str(tmp_path / "empty"), trainer=_NeverLoaded())
    assert empty.resume(optimizer, scheduler) is None

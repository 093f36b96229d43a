# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Interruption loses nothing: training killed with SIGKILL (inside a step, inside a checkpoint
write, inside a metrics write) and resumed with ``--resume`` each time ends with the weights and
metrics of an uninterrupted run; checkpoints, ``last_checkpoint`` and ``metrics.json`` are never
left partial, and a resume does not trust a partial file.
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from detectron2.data.build import build_batch_data_loader
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import TrainingSampler
from e2e_helpers import make_tiny_datasets, read_metrics, tiny_cfg, train_args, write_cfg

import train_net
from mask_former.checkpoint import TrainingCheckpointer, is_partial_checkpoint
from mask_former.data.samplers import ResumableTrainingSampler
from mask_former.engine.writers import MetricsJSONWriter
from tests.modeling.model_testing import TINY_SWIN
from tests.paths import REPO_ROOT

TIMING_KEYS = {"time", "data_time", "eta_seconds"}


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> str:
    return make_tiny_datasets(str(tmp_path_factory.mktemp("datasets")))


def _kill_test_cfg(out_dir: str):
    """6 iterations, a checkpoint every 2, of a tiny Swin MaskFormer whose drop path and random
    flips draw from torch's and NumPy's generators (so their states must be restored too)."""
    swin = {**TINY_SWIN, "MODEL.SWIN.DROP_PATH_RATE": 0.2}
    solver = {"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 2, "SOLVER.IMS_PER_BATCH": 1}
    return tiny_cfg(out_dir, **swin, **solver, **{"DATASETS.TEST": "()", "SEED": 3})


def _run_killed(root: str, config: str, kill: str, resume: bool) -> None:
    """train_net.py in a new process that SIGKILLs itself at ``kill``; checks that it did."""
    env = {**os.environ, "E2E_KILL": kill, "E2E_THREADS": str(torch.get_num_threads())}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-W", "ignore", "-m", "tests.engine.e2e_helpers", root, config]
    proc = subprocess.run(
        command + (["--resume"] if resume else []),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-3000:])


def _stale_files(out: Path) -> List[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def _without_timing(records: List[Dict]) -> List[Dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_killed_three_times_and_resumed_ends_bitwise_equal(datasets_root, tmp_path):
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "interrupted"
    ref_cfg = write_cfg(_kill_test_cfg(str(ref_out)), tmp_path / "ref.yaml")
    train_net.main(train_args(ref_cfg))
    config = write_cfg(_kill_test_cfg(str(out)), tmp_path / "run.yaml")

    # 1. Inside the write of the checkpoint of iteration 3: the previous one stays the last.
    _run_killed(datasets_root, config, "checkpoint:model_0000003", resume=False)
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_0000003.pth").exists()
    (partial,) = _stale_files(out)
    assert partial.startswith(".model_0000003.") and is_partial_checkpoint(str(out / partial))

    # 2. As iteration 5 starts (resumed at 2): the temporary file is gone, checkpoint 3 is last.
    _run_killed(datasets_root, config, "iteration:5", resume=True)
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _stale_files(out) == []

    # 3. Inside the metrics write of iteration 5 (resumed at 4): a partial last line.
    _run_killed(datasets_root, config, "metrics:5", resume=True)
    assert not (out / "metrics.json").read_bytes().endswith(b"\n")

    # Resumed at 4 again, to the end.
    train_net.main(train_args(config, resume=True))
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert _stale_files(out) == []
    ref = torch.load(ref_out / "model_final.pth", map_location="cpu", weights_only=True)
    got = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ref["model"].keys() == got["model"].keys()
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    optimizer = ref["trainer"]["_trainer"]["optimizer"]["state"]
    assert optimizer.keys() == got["trainer"]["_trainer"]["optimizer"]["state"].keys()
    # Each metrics line once, and (but for timings) as the uninterrupted run wrote it.
    assert (out / "metrics.json").read_bytes().endswith(b"\n")
    assert _without_timing(read_metrics(str(out))) == _without_timing(read_metrics(str(ref_out)))
    assert [r["iteration"] for r in read_metrics(str(out))] == [1, 3, 5]


def test_resume_does_not_trust_a_partial_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = TrainingCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    checkpointer.save("model_0000003")
    # What a non-atomic writer killed mid-write leaves: a cut file, named as the last one.
    whole = (tmp_path / "model_0000003.pth").read_bytes()
    (tmp_path / "model_0000003.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / ".model_0000005.x1.tmp.pth").write_bytes(whole[:100])  # a killed atomic write
    listed = sorted(os.path.basename(p) for p in checkpointer.get_all_checkpoint_files())
    assert listed == ["model_0000001.pth", "model_0000003.pth"]
    assert checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert _stale_files(tmp_path) == []
    (tmp_path / "last_checkpoint").write_text("")  # a cut last_checkpoint
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    os.remove(tmp_path / "model_0000001.pth")
    assert not checkpointer.has_checkpoint()  # nothing complete: start from scratch


def test_failed_checkpoint_write_keeps_the_previous_files(tmp_path, monkeypatch):
    checkpointer = TrainingCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000001")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _stale_files(tmp_path) == []


def test_metrics_writer_drops_partial_and_repeated_lines(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i, "loss": 0.5}) + "\n" for i in range(4)]
    path.write_text("".join(lines) + '{"iteration": 4, "lo')
    writer = MetricsJSONWriter(str(path))
    writer.resume(2)
    assert path.read_text() == "".join(lines[:2])
    path.write_text("".join(lines) + '{"iteration": 4, "lo')
    MetricsJSONWriter(str(path))._open()  # a run that does not resume keeps whole lines only
    assert path.read_text() == "".join(lines)


def _batches(loader, count: int) -> List[List[int]]:
    iterator = iter(loader)
    return [[d["index"] for d in next(iterator)] for _ in range(count)]


@pytest.mark.parametrize(
    "grouping, num_workers", [(False, 0), (False, 2), (True, 0), (True, 2)], ids=str
)
def test_resumed_sampler_gives_the_batches_of_an_uninterrupted_run(grouping, num_workers):
    """detectron2's own batching of the stream (buckets, per-worker batches): after ``skip``
    batches, a loader resumed there yields what the uninterrupted one yields next."""
    sizes = [(10, 20), (20, 10), (20, 10), (10, 20), (30, 10), (20, 20), (10, 30)]
    records = [{"index": i, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    groups = [0 if w > h else 1 for w, h in sizes] if grouping else None
    batch_size, skip, total = 3, 5, 9

    def loader(start_iter: int):
        sampler = ResumableTrainingSampler(
            len(records), seed=7, batch_size=batch_size, num_workers=num_workers
        )
        sampler._aspect_groups = groups
        sampler.resume(start_iter)
        dataset = MapDataset(DatasetFromList(records, copy=False), lambda d: d)
        return build_batch_data_loader(
            dataset,
            sampler,
            batch_size,
            aspect_ratio_grouping=grouping,
            num_workers=num_workers,
        )

    uninterrupted = _batches(loader(0), total)
    assert uninterrupted[:3] == _batches(
        build_batch_data_loader(
            MapDataset(DatasetFromList(records, copy=False), lambda d: d),
            TrainingSampler(len(records), seed=7),
            batch_size,
            aspect_ratio_grouping=grouping,
            num_workers=num_workers,
        ),
        3,
    )  # the same stream as detectron2's sampler
    assert _batches(loader(skip), total - skip) == uninterrupted[skip:]


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda_in_use", "no_cuda"])
def test_saved_random_state_has_the_cuda_generators_where_cuda_is_used(monkeypatch, cuda):
    """
    Both branches on every machine: CUDA is monkeypatched (in use, or absent), its generator
    states are stand-ins, and no CUDA call reaches the driver. The CPU generators come back
    either way.
    """
    from mask_former.engine.trainer import _rng_state, _set_rng_state

    cuda_states = [torch.arange(4, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = _rng_state()
    assert ("cuda" in state) is cuda
    draws = (torch.rand(3), np.random.rand(3), random.random())
    _set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and (draws[1] == again[1]).all()
    assert draws[2] == again[2]
    assert restored == ([cuda_states] if cuda else [])
    # A checkpoint of a CUDA run resumed where there is no CUDA: the CPU part only.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _set_rng_state(dict(state, cuda=cuda_states))
    assert restored == ([cuda_states] if cuda else [])

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The CPU (gloo) path of ``launch``: processes, ranks, detectron2 comm and collectives."""

import json
import os

import torch
import torch.distributed as dist
from detectron2.utils import comm

from mask_former.engine import launch


def _report_ranks(out_dir: str, offset: int) -> None:
    # Runs in each spawned process.
    rank = comm.get_rank()
    value = torch.tensor([float(rank + offset)])
    dist.all_reduce(value)
    gathered = comm.all_gather({"rank": rank})
    info = {
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "backend": dist.get_backend(),
        "sum": value.item(),
        "gathered": [g["rank"] for g in gathered],
        "pid": os.getpid(),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def test_two_cpu_processes_over_gloo(tmp_path):
    launch(_report_ranks, 2, dist_url="auto", args=(str(tmp_path), 10), use_cpu=True)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, info in enumerate(infos):
        assert info["rank"] == rank
        assert info["local_rank"] == rank
        assert info["world_size"] == 2 and info["local_size"] == 2
        assert info["backend"] == "gloo"
        assert info["sum"] == 10 + 11
        assert info["gathered"] == [0, 1]
    assert infos[0]["pid"] != infos[1]["pid"] != os.getpid()


def test_single_process_runs_in_place():
    calls = []
    launch(lambda a, b: calls.append((a, b)), 1, args=(1, 2), use_cpu=True)
    assert calls == [(1, 2)]
    assert not dist.is_initialized()

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A work function and a command line for multi-machine tests: each "machine" is a separate
command (``python -m tests.engine.distributed_helpers MACHINE_RANK URL MODE``) that launches one
CPU process, as the machines of a cluster would.
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from mask_former.engine import launch


def all_reduce_rounds(mode: str, rounds: int = 120) -> None:
    """
    All-reduce a one every 0.25 s for ``rounds`` rounds. After the second round rank 1
    misbehaves as ``mode`` says: "hang" (SIGSTOP: alive, sockets open, silent), "die"
    (SIGKILL); "ok" stops after 3 rounds.
    """
    for i in range(3 if mode == "ok" else rounds):
        value = torch.ones(1)
        dist.all_reduce(value)
        assert value.item() == dist.get_world_size()
        if i == 1 and dist.get_rank() == 1 and mode in ("hang", "die"):
            os.kill(os.getpid(), signal.SIGSTOP if mode == "hang" else signal.SIGKILL)
        time.sleep(0.25)


if __name__ == "__main__":
    machine_rank, url, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    launch(
        all_reduce_rounds,
        1,
        num_machines=2,
        machine_rank=machine_rank,
        dist_url=url,
        args=(mode,),
        use_cpu=True,
    )

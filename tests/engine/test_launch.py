# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The CPU (gloo) path of ``launch``: processes, ranks, detectron2 comm and collectives."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm

from mask_former.engine import launch
from tests.paths import REPO_ROOT


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


def _free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _start_machines(mode: str, peer_timeout: float):
    """Machine 0 and machine 1 as two separate commands, one CPU process each."""
    env = {
        **os.environ,
        "MASK_FORMER_PEER_TIMEOUT": str(peer_timeout),
        "PYTHONPATH": str(REPO_ROOT),
    }
    url = _free_url()
    command = [sys.executable, "-m", "tests.engine.distributed_helpers"]
    return [
        subprocess.Popen(
            command + [str(rank), url, mode],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a process group: the launcher and its worker
        )
        for rank in (0, 1)
    ]


def _kill_machine(machine: subprocess.Popen) -> None:
    """Kill the launcher and the worker it spawned (also a stopped one)."""
    try:
        os.killpg(machine.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    machine.communicate()


def test_two_machines_as_two_commands_rendezvous_and_finish():
    machines = _start_machines("ok", peer_timeout=30)
    try:
        outputs = [m.communicate(timeout=120)[0] for m in machines]
    finally:
        for machine in machines:
            _kill_machine(machine)
    assert [m.returncode for m in machines] == [0, 0], outputs


@pytest.mark.parametrize("mode", ["hang", "die"])
def test_a_dead_or_hung_peer_ends_the_others_with_a_clear_error(mode):
    machine0, machine1 = _start_machines(mode, peer_timeout=4)
    try:
        start = time.monotonic()
        output = machine0.communicate(timeout=90)[0]
        elapsed = time.monotonic() - start
    finally:
        _kill_machine(machine1)
        _kill_machine(machine0)
    assert machine0.returncode != 0
    assert elapsed < 60, "machine 0 waited for the dead peer instead of stopping"
    # Gloo notices a closed connection of a killed peer itself; a hung peer (SIGSTOP, sockets
    # open) only the heartbeat notices.
    if mode == "hang":
        assert "rank 0: rank(s) [1] sent no heartbeat for 4 s" in output, output
    else:
        assert "rank(s) [1] sent no heartbeat" in output or "Connection closed by peer" in output

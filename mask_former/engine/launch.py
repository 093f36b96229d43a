# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``launch``: detectron2's multi-process launcher, extended to machines without CUDA.

Detectron2 0.6's ``launch`` asserts that CUDA is available and joins the processes with the NCCL
backend. Without CUDA, this wrapper spawns the same number of processes on the CPU and joins them
with the gloo backend, setting up detectron2's communication state the way detectron2 does (global
group, per-machine local group), so ``detectron2.utils.comm`` works unchanged inside ``main_func``;
each CPU process gets an equal share of the cores as torch threads (unless OMP_NUM_THREADS is set),
and a heartbeat (:mod:`mask_former.engine.watchdog`) ends every process within
$MASK_FORMER_PEER_TIMEOUT seconds (120) of a peer's death instead of letting it hang.
With CUDA it simply calls detectron2's ``launch``.

A checkpoint error in a CPU process (:class:`mask_former.checkpoint.CheckpointError` or
:class:`~mask_former.checkpoint.UntrustedCheckpointError`: an unreadable, refused or unfitting
MODEL.WEIGHTS) ends it quietly and is raised again by ``launch`` in the parent, so that the
caller prints its one line as for a single process.
"""

import logging
import os
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..safe_loading import CheckpointError, UntrustedCheckpointError
from .watchdog import PeerWatchdog, peer_timeout_from_env

# Errors that a CPU process hands to the parent rather than printing a traceback.
_HANDED_ERRORS = (CheckpointError, UntrustedCheckpointError)

__all__ = ["launch", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

logger = logging.getLogger(__name__)


def _free_local_url() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    use_cpu: Optional[bool] = None,
) -> None:
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``
    machines (call it on every machine), or directly in this process for a world size of 1.

    Args:
        main_func: a picklable (module-level) function.
        num_gpus_per_machine: processes per machine: one per GPU, or CPU processes without CUDA.
        num_machines, machine_rank: the number of machines and the rank of this one.
        dist_url: the rendezvous URL, e.g. "tcp://127.0.0.1:50152"; "auto" (or None, with one
            machine) picks a free local port.
        args: positional arguments of ``main_func``.
        timeout: timeout of collective operations.
        use_cpu: run CPU processes over gloo; None (default) does so exactly when CUDA is not
            available.
    """
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    if not use_cpu:
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines,
            machine_rank,
            dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"launch: need at least one process and one machine, got num_gpus_per_machine="
            f"{num_gpus_per_machine}, num_machines={num_machines}"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("launch: dist_url must be given explicitly for several machines")
        dist_url = _free_local_url()
    logger.info("launching %d CPU processes (gloo) at %s", num_gpus_per_machine, dist_url)
    handed = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(
            _cpu_worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                tuple(args),
                timeout,
                handed,
            ),
            daemon=False,
        )
    except mp.ProcessExitedException:
        if not handed.empty():
            raise handed.get() from None
        raise


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    handed: Any = None,
) -> None:
    global_rank = machine_rank * procs_per_machine + local_rank
    if "OMP_NUM_THREADS" not in os.environ:
        # Share the cores instead of every process starting one thread per core, which
        # oversubscribes the CPU and slows all of them down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs_per_machine))
    store = _rendezvous_store(dist_url, global_rank, world_size, timeout)
    dist.init_process_group(
        backend="gloo",
        store=store,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    _create_local_process_group(world_size // procs_per_machine, procs_per_machine, machine_rank)
    # A barrier right after initialisation, as detectron2 does, so that a slow worker does not
    # time out in the first collective of main_func.
    comm.synchronize()
    watchdog = _start_watchdog(store, global_rank, world_size)
    try:
        main_func(*args)
        if watchdog is not None:
            watchdog.closing = True
        comm.synchronize()  # no process leaves (and takes the store down) before all are done
    except _HANDED_ERRORS as e:  # raised again by launch in the parent: no traceback here
        if handed is not None:
            handed.put(e)
        raise SystemExit(1) from None
    finally:
        if watchdog is not None:
            watchdog.stop()
        dist.destroy_process_group()


def _rendezvous_store(
    dist_url: str, rank: int, world_size: int, timeout: timedelta
) -> dist.TCPStore:
    """The TCP store of a "tcp://HOST:PORT" URL, hosted by rank 0."""
    parsed = urlparse(dist_url)
    if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
        raise ValueError(f"launch: dist_url {dist_url!r} is not of the form tcp://HOST:PORT")
    return dist.TCPStore(
        parsed.hostname, parsed.port, world_size, is_master=rank == 0, timeout=timeout
    )


def _start_watchdog(store: dist.Store, rank: int, world_size: int) -> Optional[PeerWatchdog]:
    limit = peer_timeout_from_env()
    if limit <= 0:
        return None
    return PeerWatchdog(store, rank, world_size, limit=limit).start()


def _create_local_process_group(num_machines: int, procs_per_machine: int, machine_rank: int):
    """Create the per-machine group behind ``comm.get_local_rank()`` / ``get_local_size()``."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 > 0.6
        comm.create_local_process_group(procs_per_machine)
        return
    # detectron2 0.6 has no public way to set the local group: comm.get_local_rank() and
    # get_local_size() read the module global comm._LOCAL_PROCESS_GROUP, which detectron2's own
    # launch (engine/launch.py) assigns the same way. Every process must take part in creating
    # every group, its own machine's or not.
    for i in range(num_machines):
        ranks = list(range(i * procs_per_machine, (i + 1) * procs_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A heartbeat between the processes of a CPU (gloo) run, so that a process whose peer died stops
with a clear error instead of waiting in a collective operation until its timeout (30 minutes
by default, and gloo notices no dead peer on its own).

Every process increments its own counter in the rendezvous store every ``period`` seconds and
watches the counters of all others; a counter that has not moved for ``limit`` seconds (of this
process's clock: no clock is compared across machines), or a store that cannot be reached (its
host, rank 0, died), ends this process with exit status 1 after logging which peer went silent.
"""

import logging
import os
import threading
import time
from typing import Callable, Dict, Optional

import torch.distributed as dist

__all__ = ["PeerWatchdog", "peer_timeout_from_env", "PEER_TIMEOUT_ENV"]

logger = logging.getLogger(__name__)

# Seconds without a heartbeat after which a peer counts as dead (environment variable).
PEER_TIMEOUT_ENV = "MASK_FORMER_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 120.0


def peer_timeout_from_env() -> float:
    """The peer timeout in seconds: $MASK_FORMER_PEER_TIMEOUT, else 120; <= 0 disables it."""
    value = os.environ.get(PEER_TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_PEER_TIMEOUT
    except ValueError:
        raise ValueError(f"${PEER_TIMEOUT_ENV} = {value!r} is not a number of seconds") from None


def _exit_now(message: str) -> None:
    logger.error(message)
    os._exit(1)  # the main thread may be blocked inside a collective: leave at once


class PeerWatchdog:
    """A daemon thread sending this rank's heartbeat and watching the other ranks'."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        world_size: int,
        *,
        limit: float,
        on_failure: Callable[[str], None] = _exit_now,
    ):
        """
        Args:
            store: a store shared by all ranks (keys "heartbeat/<rank>" are used).
            rank, world_size: this process's global rank and the number of processes.
            limit: seconds of silence after which a peer counts as dead (> 0).
            on_failure: called with the error message (default: log it and exit with 1).
        """
        self.store = dist.PrefixStore("mask_former/heartbeat/", store)
        self.rank, self.world_size = rank, world_size
        self.limit, self.period = limit, max(0.05, limit / 10)
        self.on_failure = on_failure
        # Set once this rank's work is done (before the final barrier): then a store that
        # disappears is rank 0 having finished too, not a failure.
        self.closing = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "PeerWatchdog":
        self._thread = threading.Thread(target=self._run, name="peer-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        last_seen: Dict[int, tuple] = {}  # rank -> (counter, local time it last changed)
        while not self._stop.wait(self.period):
            try:
                self.store.add(str(self.rank), 1)
                counters = {r: self.store.add(str(r), 0) for r in self._peers()}
            except Exception as e:  # noqa: BLE001  (any store failure means the host is gone)
                if not (self._stop.is_set() or self.closing):
                    self.on_failure(
                        f"rank {self.rank}: the rendezvous store (hosted by rank 0) is "
                        f"unreachable ({e}); rank 0 stopped? Exiting instead of hanging."
                    )
                return
            silent = self._silent_peers(counters, last_seen, time.monotonic())
            if silent and not self._stop.is_set():
                self.on_failure(
                    f"rank {self.rank}: rank(s) {silent} sent no heartbeat for {self.limit:g} s "
                    f"(stopped or hung); exiting instead of waiting in a collective operation. "
                    f"${PEER_TIMEOUT_ENV} sets this limit."
                )
                return

    def _peers(self):
        return [r for r in range(self.world_size) if r != self.rank]

    def _silent_peers(self, counters: Dict[int, int], last_seen: Dict[int, tuple], now: float):
        silent = []
        for rank, counter in counters.items():
            previous = last_seen.get(rank)
            if previous is None or previous[0] != counter:
                last_seen[rank] = (counter, now)
            elif now - previous[1] > self.limit:
                silent.append(rank)
        return silent

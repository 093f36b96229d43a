# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Training metrics that survive interruption: ``metrics.json`` never keeps a partial line, and a
resumed run continues it from the checkpoint's iteration.

detectron2's ``JSONWriter`` appends through a buffered file, so a process killed while writing can
leave half a line, and a run resumed from an earlier checkpoint appends the iterations after it a
second time. :class:`MetricsJSONWriter` writes the same lines (one JSON object per iteration,
sorted keys), each batch of lines with one ``write`` call; before its first write it drops a
partial last line, and :meth:`MetricsJSONWriter.resume` drops the lines of the iterations that a
resumed run repeats. :class:`CheckpointAlignedWriter` writes at every checkpoint iteration too,
so that (placed before the checkpointer) every metric up to a checkpoint is on disk before the
checkpoint is.
"""

import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Sequence

from detectron2.engine import PeriodicWriter
from detectron2.utils.events import EventWriter, JSONWriter, get_event_storage

from ..utils.atomic_io import atomic_write, remove_stale_temporaries

__all__ = ["MetricsJSONWriter", "CheckpointAlignedWriter"]

logger = logging.getLogger(__name__)


def _whole_lines(path: str) -> List[str]:
    """The lines of ``path`` that end with a newline and parse as JSON objects, in order."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines[-1]:
        logger.warning("%s: dropped a partial last line (%d bytes)", path, len(lines[-1]))
    kept = []
    for line in lines[:-1]:
        try:
            if isinstance(json.loads(line), dict):
                kept.append(line.decode("utf-8") + "\n")
        except ValueError:
            logger.warning("%s: dropped a line that is not JSON: %r", path, line[:80])
    return kept


class MetricsJSONWriter(JSONWriter):
    """
    ``JSONWriter`` (same file format and smoothing) that never leaves a partial line in its
    file and can continue the file of an interrupted run (:meth:`resume`).
    """

    def __init__(self, json_file: str, window_size: int = 20):
        """
        Args:
            json_file: the file to append to (created if missing).
            window_size: the window of median smoothing of the scalars that ask for it.
        """
        # JSONWriter.__init__ opens the file at once; this one opens it at the first write.
        self._path = json_file
        self._window_size = window_size
        self._last_write = -1
        self._fd = None

    def resume(self, start_iter: int) -> None:
        """Keep only the lines of iterations before ``start_iter``, where training restarts."""
        self.close()
        remove_stale_temporaries(self._path)
        if os.path.exists(self._path):
            lines = _whole_lines(self._path)
            kept = [line for line in lines if json.loads(line).get("iteration", -1) < start_iter]
            if len(kept) < len(lines):
                logger.info(
                    "%s: dropped %d lines of iterations >= %d, which resumed training repeats",
                    self._path,
                    len(lines) - len(kept),
                    start_iter,
                )
            with atomic_write(self._path, "w") as f:
                f.writelines(kept)
        self._last_write = start_iter - 1

    def _open(self) -> int:
        if os.path.exists(self._path):
            with open(self._path, "rb") as f:
                data = f.read()
            if data and not data.endswith(b"\n"):
                with atomic_write(self._path, "w") as f:
                    f.writelines(_whole_lines(self._path))
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _new_lines(self) -> str:
        """The lines of the scalars not written yet, one per iteration, as JSONWriter has them."""
        by_iter: Dict[int, Dict] = defaultdict(dict)
        storage = get_event_storage()
        for key, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                by_iter[itr][key] = value
        if by_iter:
            self._last_write = max(by_iter)
        return "".join(
            json.dumps({**scalars, "iteration": itr}, sort_keys=True) + "\n"
            for itr, scalars in sorted(by_iter.items())
        )

    def write(self) -> None:
        text = self._new_lines()
        if not text:
            return
        if self._fd is None:
            self._fd = self._open()
        data = text.encode("utf-8")
        while data:  # os.write may write less than asked (a signal, a full disk)
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CheckpointAlignedWriter(PeriodicWriter):
    """
    ``PeriodicWriter`` that also writes after every iteration that saves a checkpoint (every
    ``checkpoint_period`` iterations). Registered before the checkpointer hook, it puts the
    metrics of the iterations a checkpoint holds on disk before the checkpoint.
    """

    def __init__(self, writers: Sequence[EventWriter], period: int, checkpoint_period: int):
        super().__init__(list(writers), period=period)
        self._checkpoint_period = checkpoint_period

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._checkpoint_period == 0 and next_iter % self._period != 0:
            if next_iter != self.trainer.max_iter:  # PeriodicWriter writes the last one
                for writer in self._writers:
                    writer.write()
        super().after_step()

    @property
    def writers(self) -> List[EventWriter]:
        """The writers this hook drives."""
        return self._writers

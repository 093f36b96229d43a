# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Inference in worker processes, so several images or video frames are predicted at once: one
worker per GPU, or N workers on the CPU, each with its own :class:`~.predictor.Predictor` of
the config (so a worker's result is the in-process Predictor's for the same image).

Workers are started with the "spawn" method (a fresh interpreter: safe with the threads of
PyTorch, OpenMP and CUDA); each builds its Predictor from the config and takes
``(index, image, channel_order)`` tasks from one queue. Results come back, on the CPU, in the
order the images were put in.
"""

import queue
import traceback
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.data import Metadata

from ..safe_loading import CheckpointError, UntrustedCheckpointError
from .results import Prediction

__all__ = ["ParallelPredictor", "WorkerError", "default_num_workers", "worker_configs"]

_READY = -1  # index of the message a worker sends once its model is built
_POLL_S = 1.0  # how often a waiting main process checks that its workers are alive


class WorkerError(RuntimeError):
    """A worker process failed (its traceback is in the message) or died."""


def default_num_workers(cfg: CfgNode) -> int:
    """One worker per GPU when MODEL.DEVICE is CUDA (and there is one), else 2 CPU workers."""
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def worker_configs(cfg: CfgNode, num_workers: int) -> List[CfgNode]:
    """The config of each worker (copies): CUDA workers go round-robin over the GPUs."""
    gpus = torch.cuda.device_count() if cfg.MODEL.DEVICE.startswith("cuda") else 0
    configs = []
    for i in range(num_workers):
        worker_cfg = cfg.clone()
        worker_cfg.defrost()
        if gpus:
            worker_cfg.MODEL.DEVICE = f"cuda:{i % gpus}"
        worker_cfg.freeze()
        configs.append(worker_cfg)
    return configs


def _work(cfg: CfgNode, num_threads: int, tasks: Any, results: Any) -> None:
    """
    The loop of a worker process: build the Predictor, report ready (or the error), then
    answer each ``(index, image, channel_order)`` task with ``(index, prediction, error)``
    until ``None``.
    """
    try:
        torch.set_num_threads(num_threads)
        import mask_former  # noqa: F401  (registers the models: a spawned process starts afresh)

        from .predictor import Predictor

        predictor = Predictor(cfg, batch_size=1, precision=None)  # the cfg's, as the caller's
    except (CheckpointError, UntrustedCheckpointError) as e:  # one line, raised again by the pool
        results.put((_READY, None, e))
        return
    except Exception:
        results.put((_READY, None, traceback.format_exc()))
        return
    results.put((_READY, predictor.metadata.as_dict(), None))
    try:
        for index, image, channel_order in iter(tasks.get, None):
            try:
                results.put((index, predictor(image, channel_order).cpu(), None))
            except Exception:
                results.put((index, None, traceback.format_exc()))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the main one cleans up
        pass


class ParallelPredictor:
    """
    A pool of worker processes, each with a Predictor of the config.

    ``put(image)`` hands an image to the pool; ``get()`` returns the :class:`Prediction` of
    the oldest image not yet returned (on the CPU), so results come back in the order they
    were put. Call :meth:`shutdown` (or use it as a context manager) to stop the workers; they
    are daemons, so they also end with the main process.
    """

    def __init__(self, cfg: CfgNode, num_workers: int):
        """
        Args:
            cfg: the config of the model (MODEL.WEIGHTS is loaded by each worker; the class
                metadata, ``metadata``, is that of the workers' Predictors).
            num_workers: how many processes. Each gets an equal share (at least one) of this
                process's intra-op threads (``torch.get_num_threads()``: OMP_NUM_THREADS, else
                the physical cores); with CUDA they go round-robin over the GPUs.
        """
        if num_workers < 1:
            raise ValueError(f"ParallelPredictor needs at least one worker, got {num_workers}")
        context = mp.get_context("spawn")
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._finished: Dict[int, Union[Prediction, str]] = {}  # a result or an error
        self.metadata = Metadata(name="__not_ready")
        self._num_put = 0
        self._num_got = 0
        self._num_received = 0  # results (or errors) that came back, discarded ones included
        threads = max(1, torch.get_num_threads() // num_workers)
        self._workers = [
            context.Process(
                target=_work,
                args=(worker_cfg, threads, self._tasks, self._results),
                name=f"inference-worker-{i}",
                daemon=True,
            )
            for i, worker_cfg in enumerate(worker_configs(cfg, num_workers))
        ]
        try:
            for worker in self._workers:
                worker.start()
            self._wait_until_ready()
        except BaseException:
            self.shutdown()
            raise

    @property
    def num_workers(self) -> int:
        """The number of worker processes (0 after :meth:`shutdown`)."""
        return len(self._workers)

    @property
    def default_buffer_size(self) -> int:
        """How many images a caller may keep in flight to keep every worker busy."""
        return 5 * self.num_workers

    def __len__(self) -> int:
        """The number of images put in whose prediction was not returned yet."""
        return self._num_put - self._num_got

    def __call__(self, image: np.ndarray, channel_order: str = "RGB") -> Prediction:
        """Predict one image and wait for it (only when no other image is in flight)."""
        if len(self):
            raise RuntimeError(f"{len(self)} images in flight; get() them first")
        self.put(image, channel_order)
        return self.get()

    def put(self, image: np.ndarray, channel_order: str = "RGB") -> None:
        """Queue an image: an (H, W, 3) uint8 array in ``channel_order`` ("RGB" or "BGR")."""
        self._tasks.put((self._num_put, image, channel_order))
        self._num_put += 1

    def get(self) -> Prediction:
        """
        The prediction of the oldest image not yet returned, waiting for it if needed.

        Raises:
            WorkerError: the worker failed on that image (which counts as returned: the next
                call returns the next image), or a worker died.
        """
        if not len(self):
            raise RuntimeError("ParallelPredictor.get() without an image put in")
        while self._num_got not in self._finished:
            index, prediction, error = self._receive()
            self._num_received += 1
            if index < self._num_got:  # an image discarded while in flight
                continue
            if error is not None and index == self._num_got:
                self._num_got += 1  # this image is answered by the error; the pool goes on
                raise WorkerError(f"An inference worker failed on image {index}:\n{error}")
            self._finished[index] = prediction if error is None else error
        self._num_got += 1
        result = self._finished.pop(self._num_got - 1)
        if isinstance(result, str):  # an error that came back before the images ahead of it
            raise WorkerError(f"An inference worker failed on image {self._num_got - 1}:\n{result}")
        return result

    def discard_pending(self) -> None:
        """Forget the images in flight: their results are dropped when they come back."""
        self._finished.clear()
        self._num_got = self._num_put

    def _receive(self) -> Tuple[int, Optional[Prediction], Optional[str]]:
        """The next message of any worker; raises WorkerError once a worker has died."""
        while True:
            try:
                return self._results.get(timeout=_POLL_S)
            except queue.Empty:
                pass
            dead = [worker for worker in self._workers if worker.exitcode is not None]
            if dead:
                try:  # what it sent just before it ended may still be on its way
                    return self._results.get(timeout=_POLL_S)
                except queue.Empty:
                    raise WorkerError(
                        f"{dead[0].name} exited unexpectedly (exit code {dead[0].exitcode})"
                    ) from None

    def _wait_until_ready(self) -> None:
        for _ in self._workers:
            index, metadata, error = self._receive()
            if isinstance(error, Exception):  # a checkpoint error: its one line is the message
                raise error
            if error is not None:
                raise WorkerError(f"An inference worker could not build the model:\n{error}")
            if index != _READY:
                raise WorkerError(f"An inference worker answered {index} before it was ready")
            name = metadata.pop("name", "__worker_classes")
            self.metadata = Metadata(name=name).set(**metadata)

    def shutdown(self) -> None:
        """
        Stop the workers: a clean exit when every result came back, else (after an error, an
        interrupt or :meth:`discard_pending`) at once. Safe to call more than once.
        """
        if not self._workers:
            return
        if self._num_received == self._num_put:
            for worker in self._workers:
                if worker.is_alive():
                    self._tasks.put(None)
            for worker in self._workers:
                worker.join(timeout=10)
        for worker in self._workers:
            self._stop(worker)
        self._workers = []
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()  # never wait at exit for data no one will read
            channel.close()

    @staticmethod
    def _stop(worker: Any) -> None:
        """End one worker process: terminate, then kill if it still runs."""
        if worker.pid is None:  # never started
            return
        if worker.is_alive():
            worker.terminate()
            worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
        worker.join()

    def __enter__(self) -> "ParallelPredictor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

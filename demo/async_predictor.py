# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Run Detectron2's DefaultPredictor in worker processes, so several images or video frames are
predicted at once: one worker per GPU, or N workers on the CPU.

Workers are started with the "spawn" method (a fresh interpreter: safe with the threads of
PyTorch, OpenMP and CUDA); each builds the model from the config and takes ``(index, image)``
tasks from one queue. Results come back in the order the images were put in.
"""

import queue
import traceback
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

import mask_former  # noqa: F401  (registers the models in the workers, which start afresh)

__all__ = ["AsyncPredictor", "WorkerError", "default_num_workers"]

_READY = -1  # index of the message a worker sends once its model is built
_POLL_S = 1.0  # how often a waiting main process checks that its workers are alive


class WorkerError(RuntimeError):
    """A worker process failed (its traceback is in the message) or died."""


def default_num_workers(cfg: CfgNode) -> int:
    """One worker per GPU when MODEL.DEVICE is CUDA (and there is one), else 2 CPU workers."""
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def _worker_configs(cfg: CfgNode, num_workers: int) -> List[CfgNode]:
    """The config of each worker: CUDA workers go round-robin over the visible GPUs."""
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


def _to_cpu(predictions: Dict[str, Any]) -> Dict[str, Any]:
    """Move the tensors of a model output to the CPU, to send them to the main process."""
    moved = {}
    for key, value in predictions.items():
        if key == "panoptic_seg":
            segments, segments_info = value
            moved[key] = (segments.to("cpu"), segments_info)
        else:  # a tensor ("sem_seg") or Instances
            moved[key] = value.to("cpu")
    return moved


def _work(cfg: CfgNode, num_threads: int, tasks: Any, results: Any) -> None:
    """
    The loop of a worker process: build the predictor, report ready (or the error), then
    answer each ``(index, image)`` task with ``(index, predictions, error)`` until ``None``.
    """
    try:
        torch.set_num_threads(num_threads)
        predictor = DefaultPredictor(cfg)
    except Exception:
        results.put((_READY, None, traceback.format_exc()))
        return
    results.put((_READY, None, None))
    try:
        for index, image in iter(tasks.get, None):
            try:
                results.put((index, _to_cpu(predictor(image)), None))
            except Exception:
                results.put((index, None, traceback.format_exc()))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the main one cleans up
        pass


class AsyncPredictor:
    """
    A pool of worker processes, each with a :class:`DefaultPredictor` of the config.

    ``put(image)`` hands an image to the pool; ``get()`` returns the prediction of the oldest
    image not yet returned (on the CPU), so results come back in the order they were put.
    Call :meth:`shutdown` (or use it as a context manager) to stop the workers; they are
    daemons, so they also end with the main process.
    """

    def __init__(self, cfg: CfgNode, num_workers: int):
        """
        Args:
            cfg (CfgNode): the config of the model (MODEL.WEIGHTS is loaded by each worker).
            num_workers (int): how many processes. Each gets an equal share (at least one) of
                this process's intra-op threads (``torch.get_num_threads()``: OMP_NUM_THREADS,
                else the physical cores); with CUDA they go round-robin over the GPUs.
        """
        if num_workers < 1:
            raise ValueError(f"AsyncPredictor needs at least one worker, got {num_workers}")
        context = mp.get_context("spawn")
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._finished: Dict[int, Dict[str, Any]] = {}
        self._num_put = 0
        self._num_got = 0
        self._num_received = 0  # results (or errors) that came back, discarded ones included
        threads = max(1, torch.get_num_threads() // num_workers)
        self._workers = [
            context.Process(
                target=_work,
                args=(worker_cfg, threads, self._tasks, self._results),
                name=f"demo-worker-{i}",
                daemon=True,
            )
            for i, worker_cfg in enumerate(_worker_configs(cfg, num_workers))
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
        return len(self._workers)

    @property
    def default_buffer_size(self) -> int:
        """How many images a caller may keep in flight to keep every worker busy."""
        return 5 * self.num_workers

    def __len__(self) -> int:
        """The number of images put in whose prediction was not returned yet."""
        return self._num_put - self._num_got

    def __call__(self, image: Any) -> Dict[str, Any]:
        """Predict one image and wait for it (only when no other image is in flight)."""
        if len(self):
            raise RuntimeError(f"AsyncPredictor: {len(self)} images in flight; get() them first")
        self.put(image)
        return self.get()

    def put(self, image: Any) -> None:
        """Queue an image (an (H, W, 3) uint8 BGR array, as for DefaultPredictor)."""
        self._tasks.put((self._num_put, image))
        self._num_put += 1

    def get(self) -> Dict[str, Any]:
        """
        The prediction of the oldest image not yet returned, waiting for it if needed.

        Raises:
            WorkerError: the worker failed on that image, or a worker died.
        """
        if not len(self):
            raise RuntimeError("AsyncPredictor.get() without an image put in")
        while self._num_got not in self._finished:
            index, predictions, error = self._receive()
            self._num_received += 1
            if index < self._num_got:  # an image discarded while in flight
                continue
            if error is not None:
                raise WorkerError(f"A demo worker failed on image {index}:\n{error}")
            self._finished[index] = predictions
        self._num_got += 1
        return self._finished.pop(self._num_got - 1)

    def discard_pending(self) -> None:
        """Forget the images in flight: their results are dropped when they come back."""
        self._finished.clear()
        self._num_got = self._num_put

    def _receive(self) -> Tuple[int, Optional[Dict[str, Any]], Optional[str]]:
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
            index, _, error = self._receive()
            if error is not None:
                raise WorkerError(f"A demo worker could not build the model:\n{error}")
            assert index == _READY, index

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
            if worker.pid is None:  # never started
                continue
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
            worker.join()
        self._workers = []
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()  # never wait at exit for data no one will read
            channel.close()

    def __enter__(self) -> "AsyncPredictor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A training sampler that resumes: after ``--resume`` from the checkpoint of iteration k, training
sees the batches an uninterrupted run would have seen from iteration k + 1 on.

detectron2's ``TrainingSampler`` restarts its (seeded) stream of indices whenever a loader is
built, so a resumed run trains on the first batches again. :class:`ResumableTrainingSampler`
yields the same stream, minus what the first ``start_iter`` batches took, arranged for the way
detectron2's train loader turns indices into batches (``build_batch_data_loader``):

* without aspect-ratio grouping and without workers, a batch is the next ``batch_size`` indices;
* without grouping, with N workers, worker ``w`` batches every N-th index from ``w`` on, and the
  loader takes one batch from each worker in turn;
* with grouping, indices reach the grouper in stream order (workers or not), and a batch is the
  first aspect-ratio bucket (width > height, or not) to hold ``batch_size`` records; what the
  buckets hold at ``start_iter`` comes first in the resumed stream.

The batches are those of the uninterrupted run; how their records are augmented is exact only as
far as the random state is (see :class:`mask_former.engine.Trainer`).
"""

import itertools
import logging
from typing import Iterator, List, Optional, Sequence

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "aspect_ratio_groups"]

logger = logging.getLogger(__name__)


def aspect_ratio_groups(dataset_dicts: Sequence[dict]) -> Optional[List[int]]:
    """
    The bucket of each record for detectron2's aspect-ratio grouping (0: width > height, else
    1), or None when a record lacks its size (the mapper fills it in from the image).
    """
    if not all("width" in d and "height" in d for d in dataset_dicts):
        return None
    return [0 if d["width"] > d["height"] else 1 for d in dataset_dicts]


def _skip_grouped(
    stream: Iterator[int], num_batches: int, batch_size: int, groups: Sequence[int]
) -> Iterator[int]:
    """The stream after ``num_batches`` grouped batches, led by the buckets' leftovers."""
    buckets: List[List[int]] = [[], []]
    for _ in range(num_batches):
        while True:
            index = next(stream)
            bucket = buckets[groups[index]]
            bucket.append(index)
            if len(bucket) == batch_size:
                bucket.clear()
                break
    return itertools.chain(buckets[0], buckets[1], stream)


def _skip_worker_batches(
    stream: Iterator[int], num_batches: int, batch_size: int, num_workers: int
) -> Iterator[int]:
    """
    The stream after ``num_batches`` batches made by ``num_workers`` workers, re-interleaved so
    that worker v of a new loader continues old worker ``(num_batches + v) % num_workers``.
    """
    shards = [
        itertools.islice(tee, w, None, num_workers)
        for w, tee in enumerate(itertools.tee(stream, num_workers))
    ]
    for w, shard in enumerate(shards):
        done = len(range(w, num_batches, num_workers))  # batches worker w made
        shards[w] = itertools.islice(shard, done * batch_size, None)
    order = [shards[(num_batches + v) % num_workers] for v in range(num_workers)]
    return (next(shard) for shard in itertools.cycle(order))


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` (same stream for the same seed) that can resume at an iteration."""

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        aspect_groups: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            size, shuffle, seed: as for ``TrainingSampler`` (seed None: a shared random seed).
            batch_size: the batch size of this process (SOLVER.IMS_PER_BATCH / world size).
            num_workers: DATALOADER.NUM_WORKERS.
            aspect_groups: with DATALOADER.ASPECT_RATIO_GROUPING, the bucket of each record (see
                :func:`aspect_ratio_groups`); None without grouping.
        """
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._batch_size = batch_size
        self._num_workers = num_workers
        self._aspect_groups = aspect_groups
        self._start_iter = 0

    @property
    def seed(self) -> int:
        """The seed of the shuffle (save it to resume the same stream)."""
        return self._seed

    @property
    def aspect_groups(self) -> Optional[Sequence[int]]:
        """The bucket of each record, as given (None: the stream is skipped as ungrouped)."""
        return self._aspect_groups

    def resume(self, start_iter: int, seed: Optional[int] = None) -> None:
        """
        Make the next ``iter()`` start where iteration ``start_iter`` starts in a run whose
        sampler had ``seed`` (default: this sampler's). Takes effect for loader iterators (and
        workers) created afterwards.
        """
        if seed is not None:
            self._seed = int(seed)
        self._start_iter = int(start_iter)

    def __iter__(self) -> Iterator[int]:
        stream = super().__iter__()
        skip, size = self._start_iter, self._batch_size
        if skip <= 0:
            yield from stream
        elif self._aspect_groups is not None:
            yield from _skip_grouped(stream, skip, size, self._aspect_groups)
        elif self._num_workers > 1:
            yield from _skip_worker_batches(stream, skip, size, self._num_workers)
        else:
            yield from itertools.islice(stream, skip * size, None)

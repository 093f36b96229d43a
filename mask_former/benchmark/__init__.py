# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The benchmark of ``tools/benchmark.py`` (``make bench``), importable as one unit:

- :mod:`.suite`: the rows, their configs and repeats, and :func:`~.suite.run`;
- :mod:`.runner`: each model case in a process of its own, on this checkout and a baseline;
- :mod:`.worker`: the self-contained file those processes execute by path (it also runs against
  older checkouts that have no benchmark package), and the timing helpers;
- :mod:`.rows`: the rows measured in this process (peak, matcher, mapper, evaluation, ONNX);
- :mod:`.report`: the markdown tables and the JSON file.

The timing helpers are shared with ``dev/bench_train_step.py``: :func:`time_calls`,
:func:`summarize`, :func:`sync` and :func:`environment`.
"""

from .worker import environment, summarize, sync, time_calls, voronoi_segments

__all__ = ["environment", "summarize", "sync", "time_calls", "voronoi_segments"]

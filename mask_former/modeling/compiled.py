# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Compiled inference (MODEL.MASK_FORMER.TEST.COMPILE): the network half of an inference call
(backbone and head, :func:`~.meta_arch.inference_outputs`) through ``torch.compile``; the
post-processing stays eager (it is shaped by each image's output size).

* The compiled function is made on the first inference call, not when the model is built, so
  building, loading and saving a model are unchanged (its ``state_dict`` keys too: nothing is
  registered as a submodule).
* Shapes are static: each distinct padded input shape compiles once, up to ``max_shapes``
  shapes; inputs of further shapes run eagerly (logged once), so a folder of images of many
  sizes never recompiles without bound. Dynamic shapes were not used: on the CPU they give up
  the shape-specialised kernels that make compilation pay.
* Inductor's ``freezing`` treats the weights as constants (folded and pre-packed for oneDNN).
  The compiled function is therefore dropped whenever the weights may change: when the
  model's weights are loaded, when it is moved (``.to``, ``.cpu``...) and when it enters
  training mode. Calls with gradients enabled run eagerly.

Shape shorthand: B images, H, W the padded input size, Q queries, K classes.
"""

import logging
from typing import Callable, Dict, Optional, Set, Tuple

import torch
from torch import nn

from .precision import inference_autocast_dtype

__all__ = ["CompiledNetwork", "MAX_COMPILED_SHAPES"]

logger = logging.getLogger(__name__)

# Distinct input shapes compiled before further shapes run eagerly (each compile of the R50
# network takes 30 to 60 s on 2 cores).
MAX_COMPILED_SHAPES = 4
# torch.compile's backend, and its options for CPU inference.
BACKEND = "inductor"
INDUCTOR_OPTIONS = {"freezing": True}

ShapeKey = Tuple[Tuple[int, ...], torch.dtype, str, Optional[torch.dtype]]


class _Network(nn.Module):
    """``network(backbone, sem_seg_head, images, dtype)`` as a module: what is compiled, so
    that the weights are the module's attributes (constants to inductor's freezing)."""

    def __init__(self, network: Callable, backbone: nn.Module, sem_seg_head: nn.Module):
        super().__init__()
        self.network = network
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head

    def forward(self, images: torch.Tensor, dtype: Optional[torch.dtype]) -> Dict:
        return self.network(self.backbone, self.sem_seg_head, images, dtype)


class CompiledNetwork:
    """
    ``network(backbone, sem_seg_head, images, dtype)`` through ``torch.compile``, made on first
    use and bounded to ``max_shapes`` input shapes; a plain object (not an ``nn.Module``), so
    the model that holds it keeps its parameters and keys. Called like
    :func:`~.meta_arch.inference_outputs`, with TEST.PRECISION resolved to an autocast dtype
    outside the compiled graph (its once-only log lines would otherwise recompile it).
    """

    def __init__(self, network: Callable, max_shapes: int = MAX_COMPILED_SHAPES):
        """
        Args:
            network: ``(backbone, sem_seg_head, images (B, 3, H, W), dtype) -> outputs``, free
                of side effects (:func:`~.meta_arch.network_outputs`).
            max_shapes: distinct (shape, dtype, device, autocast dtype) inputs to compile.
        """
        self.network = network
        self.max_shapes = max_shapes
        self._compiled: Optional[Callable] = None
        self._shapes: Set[ShapeKey] = set()
        self._told_eager = False

    @property
    def compiled_shapes(self) -> Set[ShapeKey]:
        """The input keys compiled since the last :meth:`reset`."""
        return set(self._shapes)

    def reset(self) -> None:
        """Forget the compiled function (the weights it froze may have changed)."""
        self._compiled = None
        self._shapes.clear()
        self._told_eager = False

    def _admit(self, key: ShapeKey) -> bool:
        """Whether ``key`` runs compiled: already compiled, or room for one more shape."""
        if key in self._shapes:
            return True
        if len(self._shapes) >= self.max_shapes:
            if not self._told_eager:
                self._told_eager = True
                logger.info(
                    "MODEL.MASK_FORMER.TEST.COMPILE: %d input shapes compiled; inputs of other "
                    "shapes (here %s) run eagerly",
                    self.max_shapes,
                    tuple(key[0]),
                )
            return False
        self._shapes.add(key)
        logger.info(
            "MODEL.MASK_FORMER.TEST.COMPILE: compiling the network for input %s; the first "
            "call of each shape takes a while",
            tuple(key[0]),
        )
        return True

    def __call__(
        self, backbone: nn.Module, sem_seg_head: nn.Module, images: torch.Tensor, precision: str
    ) -> Dict[str, torch.Tensor]:
        dtype = inference_autocast_dtype(precision, images.device.type)
        key = (tuple(images.shape), images.dtype, str(images.device), dtype)
        if torch.is_grad_enabled() or not self._admit(key):
            return self.network(backbone, sem_seg_head, images, dtype)
        if self._compiled is None:
            _import_cpp_extension_quietly()
            cpu_inductor = BACKEND == "inductor" and images.device.type == "cpu"
            options = INDUCTOR_OPTIONS if cpu_inductor else None
            module = _Network(self.network, backbone, sem_seg_head)
            self._compiled = torch.compile(module, backend=BACKEND, dynamic=False, options=options)
        return self._compiled(images, dtype)


def _import_cpp_extension_quietly() -> None:
    """
    Inductor imports ``torch.utils.cpp_extension``, which logs "No CUDA runtime is found, using
    CUDA_HOME=..." on a machine without CUDA, although CPU code generation never uses CUDA:
    import it first with that logger raised to errors.
    """
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)

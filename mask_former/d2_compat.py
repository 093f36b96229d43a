# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The one place that bridges detectron2 0.6 (pure-Python build) to a modern environment.

The detectron2 available from the package registry (``pb1-detectron2==0.6``) ships only the
Python sources, without the compiled ``detectron2._C`` extension, and was written for NumPy < 1.24
and Pillow < 10. Three gaps follow, each bridged here only where it exists:

1. ``detectron2._C`` is missing: a stand-in module is served in its place. Importing it works
   (``detectron2.layers`` imports it at import time); calling any compiled op raises a
   ``RuntimeError`` that names the op. Where a compiled ``_C`` can be found, it is used and
   nothing below is applied.
2. NumPy >= 1.24 removed the aliases ``np.int``, ``np.float``, ``np.bool``, ``np.object``,
   ``np.str`` that detectron2 0.6 uses at run time: restored, only if missing (NumPy 2 brought
   ``np.bool`` back as ``np.bool_``, which detectron2's uses accept, so it is left alone there).
3. Pillow >= 10 removed ``Image.LINEAR`` that detectron2 0.6 uses as a default argument at import
   time: restored, only if missing.

Independently of the compiled extension, two modules that detectron2 0.6 imports script functions
with ``torch.jit.script`` at import time, which torch >= 2.10 answers with a ``FutureWarning``
(``torch.jit.script`` is deprecated) that no user of this project can act on:
``detectron2.modeling.box_regression`` (two functions) and ``fvcore.nn.focal_loss`` (two, imported
by ``detectron2.engine``). Exactly that warning is ignored while exactly those modules execute
(:data:`QUIET_IMPORTS`); every other warning, and the same warning from any other code, is shown
as usual.

Under NumPy 2, two run-time calls of the dependencies raise a ``DeprecationWarning`` because an
``__array__`` method they hand to NumPy (torch's ``Tensor.__array__``, pycocotools' ``Masks``)
takes no ``copy`` argument: ``np.array(output, dtype=np.int)`` in detectron2's
``SemSegEvaluator.process`` and ``pycocotools.mask.decode``. :data:`KNOWN_WARNINGS` ignores exactly
that message, attributed to exactly those modules (``warnings.filterwarnings`` with message,
category and module), from :func:`install` on.

The bridge is an import hook (a :class:`importlib.abc.MetaPathFinder`), so it works whichever is
imported first, ``mask_former`` or ``detectron2``: ``mask_former/__init__.py`` installs it, and
``make setup`` puts a one-line ``.pth`` start-up file into the virtual environment that installs it
in every interpreter of that environment. This module imports nothing outside the standard library
at import time, so the start-up hook costs nothing for programs that never import detectron2.

One more adaptation of detectron2 is made by ``import mask_former``, for safety rather than
compatibility, and lives in its own module: ``mask_former.safe_loading.install_safe_loading``
makes ``DetectionCheckpointer`` read files without running code from them.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "install",
    "MissingCompiledOpError",
    "patched",
    "NUMPY_ALIASES",
    "QUIET_IMPORTS",
    "KNOWN_WARNINGS",
]

logger = logging.getLogger(__name__)

# NumPy aliases removed in 1.24 and the builtins they stood for.
NUMPY_ALIASES = {"int": int, "float": float, "bool": bool, "object": object, "str": str}

# Module -> (warning category, regular expression the message starts with): warnings a dependency
# raises while that module executes at import time, ignored there only.
_JIT_SCRIPT_DEPRECATED = (FutureWarning, r"`torch\.jit\.script` is deprecated")
QUIET_IMPORTS: Dict[str, Tuple[type, str]] = {
    "detectron2.modeling.box_regression": _JIT_SCRIPT_DEPRECATED,
    "fvcore.nn.focal_loss": _JIT_SCRIPT_DEPRECATED,
}

# (category, message regular expression, module regular expression) of warnings that dependencies
# raise at run time and that this project's users cannot act on: ignored by install().
_NO_COPY_KEYWORD = r"__array__ implementation doesn't accept a copy keyword"
KNOWN_WARNINGS: List[Tuple[type, str, str]] = [
    (DeprecationWarning, _NO_COPY_KEYWORD, r"detectron2\.evaluation\.sem_seg_evaluation$"),
    (DeprecationWarning, _NO_COPY_KEYWORD, r"pycocotools\.mask$"),
]

# What this module changed in the running interpreter (for tests and debugging).
patched: List[str] = []


class MissingCompiledOpError(RuntimeError):
    """Raised when code calls an op of detectron2's compiled extension, which is not installed."""


class _MissingExtension(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, but every compiled op raises on use."""

    def __getattr__(self, name: str):
        # torch and importlib probe modules for dunder attributes: those must look absent.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def _unavailable(*args, **kwargs):
            raise MissingCompiledOpError(
                f"detectron2._C.{name} is a compiled op, but this detectron2 was installed "
                "without its C++/CUDA extension. Install a compiled detectron2 (see README.md, "
                "'GPU users') to use it."
            )

        _unavailable.__name__ = name
        return _unavailable


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return _MissingExtension(spec.name)

    def exec_module(self, module):
        module.__file__ = None  # marks the stand-in; real extensions have a path


class _Detectron2CompatFinder(importlib.abc.MetaPathFinder):
    """Sits first on ``sys.meta_path``; only reacts to ``detectron2`` and ``detectron2._C``."""

    _mask_former_d2_compat = True  # recognised by install() even across module copies

    def __init__(self):
        self._checked = False

    def _others(self):
        return [f for f in sys.meta_path if not getattr(f, "_mask_former_d2_compat", False)]

    def _find_elsewhere(self, name: str, path: Optional[Sequence[str]]):
        for finder in self._others():
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(name, path)
            if spec is not None:
                return spec
        return None

    def find_spec(self, fullname, path, target=None):
        if fullname == "detectron2" and not self._checked:
            self._checked = True
            spec = self._find_elsewhere("detectron2", path)
            if spec is not None and spec.submodule_search_locations is not None:
                locations = list(spec.submodule_search_locations)
                if self._find_elsewhere("detectron2._C", locations) is None:
                    _restore_removed_names()
            return None  # the normal machinery imports detectron2 itself
        if fullname == "detectron2._C":
            if self._find_elsewhere(fullname, path) is not None:
                return None
            _record("detectron2._C stand-in")
            return importlib.machinery.ModuleSpec(fullname, _StandInLoader())
        if fullname in QUIET_IMPORTS:
            spec = self._find_elsewhere(fullname, path)
            if spec is not None and spec.loader is not None:
                _quieten(spec.loader, fullname)
            return spec
        return None


def _quieten(loader: importlib.abc.Loader, fullname: str) -> None:
    """
    Make this one loader instance (created for this one import) execute its module with the
    known warning of :data:`QUIET_IMPORTS` ignored; the module keeps its own loader.
    """
    category, message = QUIET_IMPORTS[fullname]
    exec_module = loader.exec_module

    def quiet_exec_module(module):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=message, category=category)
            exec_module(module)

    loader.exec_module = quiet_exec_module
    _record(f"{fullname}: {category.__name__} '{message}' ignored while it is imported")


def _record(what: str) -> None:
    if what not in patched:
        patched.append(what)
        logger.debug("detectron2 compatibility: %s", what)


def _restore_removed_names() -> None:
    """Restore the NumPy aliases and the Pillow constant that detectron2 0.6 still uses."""
    import numpy as np
    from PIL import Image

    for alias, builtin in NUMPY_ALIASES.items():
        # Look in the module dict: getattr would go through numpy's deprecation __getattr__.
        if alias not in vars(np):
            setattr(np, alias, builtin)
            _record(f"numpy.{alias}")
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        _record("PIL.Image.LINEAR")


def install() -> None:
    """
    Install the bridge and the filters of :data:`KNOWN_WARNINGS` (idempotent). If detectron2 is
    already imported, the NumPy/Pillow names are restored at once when its compiled extension is
    missing.
    """
    if not any(getattr(f, "_mask_former_d2_compat", False) for f in sys.meta_path):
        for category, message, module in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        finder = _Detectron2CompatFinder()
        sys.meta_path.insert(0, finder)
        if "detectron2" in sys.modules:
            # Too late to intercept the import: decide from what is on disk now.
            finder._checked = True
            locations = list(getattr(sys.modules["detectron2"], "__path__", []))
            if finder._find_elsewhere("detectron2._C", locations) is None:
                _restore_removed_names()

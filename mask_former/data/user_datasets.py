# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Registering a user's own datasets: :func:`import_registration` imports the user's module or file
that registers them (``--register`` of ``demo/demo.py`` and ``tools/check_dataset.py``). It is
the one place of the project that puts a user's folder on ``sys.path``.
"""

import argparse
import importlib
import importlib.util
import os
import sys

__all__ = ["add_register_argument", "import_registration"]


def add_register_argument(parser: argparse.ArgumentParser, why: str = "") -> None:
    """Add ``--register MODULE_OR_FILE`` (repeatable) to a command line; ``why`` ends its help."""
    parser.add_argument(
        "--register",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="a Python module (my_project.datasets) or file (my_datasets.py) that registers "
        "datasets, imported first; may be repeated" + why,
    )


def import_registration(target: str) -> None:
    """
    Import a module by name (from the current folder too, as ``python -m``) or a .py file.
    The user's folder (the file's, or the current one for a module name) goes first on
    ``sys.path``, so that the module imports the modules beside it.

    Raises:
        FileNotFoundError: ``target`` looks like a file (ends in .py or has a path separator)
            that does not exist.
        ImportError: the module cannot be imported (and whatever the module itself raises).
    """
    is_file = target.endswith(".py") or os.sep in target
    if is_file and not os.path.isfile(target):
        raise FileNotFoundError(f"--register {target!r}: no such file")
    folder = os.path.dirname(os.path.abspath(target)) if is_file else os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if not is_file:
        importlib.import_module(target)
        return
    name = os.path.splitext(os.path.basename(target))[0]
    spec = importlib.util.spec_from_file_location(name, target)
    if spec is None or spec.loader is None:
        raise ImportError(f"--register {target!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)

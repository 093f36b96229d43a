#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Install detectron2 0.6's Python packages, without its C++/CUDA extension, into this interpreter.

The registry's only usable distribution, ``pb1-detectron2==0.6``, is a source distribution that
lacks the extension's sources, so a plain ``pip install`` fails while compiling it. This script
downloads it by name and version, checks it against a pinned SHA-256, builds a pure-Python wheel
from it with the extension left out (its setup.py is run unchanged through a wrapper that clears
``ext_modules``), and installs that wheel without dependencies (its metadata pins dev tools;
``requirements/base.txt`` lists the real run-time needs). Nothing of detectron2 is edited or kept.

Skipped when this interpreter already has a compiled detectron2 (``detectron2._C``).
Usage: python dev/install_detectron2.py
"""

import glob
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile

logger = logging.getLogger("install_detectron2")

DISTRIBUTION = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Runs detectron2's setup.py with the compiled extension and its build command removed.
_WRAPPER = """
import sys, setuptools
_setup = setuptools.setup
def _pure_python_setup(**kwargs):
    kwargs["ext_modules"] = []
    kwargs.pop("cmdclass", None)
    return _setup(**kwargs)
setuptools.setup = _pure_python_setup
sys.argv = ["setup.py", "-q", "bdist_wheel", "--dist-dir", sys.argv[1]]
import os
exec(compile(open("setup.py").read(), "setup.py", "exec"),
     {"__name__": "__main__", "__file__": os.path.abspath("setup.py")})
"""


def _run(cmd, **kwargs):
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)


def has_compiled_detectron2() -> bool:
    # The stand-in of mask_former.d2_compat has no origin; a real extension has its file.
    code = (
        "import importlib.util as u, sys; s = u.find_spec('detectron2._C'); "
        "sys.exit(0 if s is not None and s.origin else 1)"
    )
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    except OSError:
        return False


def _installed_version(distribution: str):
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_wheel(workdir: str) -> str:
    pip = [sys.executable, "-m", "pip"]
    _run(
        pip
        + [
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            DISTRIBUTION,
            "-d",
            workdir,
        ]
    )
    (sdist,) = glob.glob(os.path.join(workdir, "*.tar.gz"))
    actual = _sha256(sdist)
    if actual != SDIST_SHA256:
        raise SystemExit(f"{sdist}: SHA-256 {actual} does not match the pinned {SDIST_SHA256}")
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    (srcdir,) = [d for d in glob.glob(os.path.join(workdir, "*")) if os.path.isdir(d)]
    wheel_dir = os.path.join(workdir, "wheel")
    logger.info("building a pure-Python wheel in %s", srcdir)
    subprocess.run([sys.executable, "-c", _WRAPPER, wheel_dir], cwd=srcdir, check=True)
    (wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
    return wheel


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if has_compiled_detectron2():
        logger.info("a compiled detectron2 is already installed; leaving it in place")
        return
    if _installed_version("pb1-detectron2") == "0.6":
        logger.info("detectron2 0.6 (pure Python) is already installed")
        return
    with tempfile.TemporaryDirectory() as workdir:
        wheel = build_wheel(workdir)
        pip = [sys.executable, "-m", "pip"]
        _run(pip + ["install", "-q", "--no-deps", "--force-reinstall", wheel])
    logger.info("installed detectron2 0.6 (pure Python; compiled ops unavailable)")


if __name__ == "__main__":
    main()

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The detectron2 compatibility bridge (mask_former/d2_compat.py). Each case runs in a fresh
interpreter, since what it checks happens at import time.
"""

import os
import subprocess
import sys
import textwrap

from tests.paths import REPO_ROOT

# Takes the bridge out of a fresh interpreter of the venv (its start-up hook installs it), so a
# case can show what happens without it or with the package's own install.
_REMOVE_STARTUP_HOOK = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_mask_former_d2_compat", False)]
sys.modules.pop("mask_former.d2_compat", None)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc


def _check(code: str) -> str:
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_missing_extension_op_raises_named_error_mask_former_first():
    out = _check(
        _REMOVE_STARTUP_HOOK
        + """
        import mask_former
        import detectron2.layers, detectron2.data, detectron2.evaluation  # needs the bridge
        from detectron2 import _C
        from mask_former.d2_compat import MissingCompiledOpError
        try:
            _C.deform_conv_forward(1, 2)
        except MissingCompiledOpError as e:
            print("ERROR:", e)
        """.replace("\n        ", "\n")
    )
    assert "ERROR: detectron2._C.deform_conv_forward is a compiled op" in out


def test_detectron2_first_works_through_startup_hook():
    out = _check(
        """
        import numpy as np
        from PIL import Image
        import detectron2.modeling, detectron2.data.transforms
        import mask_former
        print(sorted(mask_former.d2_compat.patched))
        print(np.int is int, np.float is float, Image.LINEAR == Image.BILINEAR)
        """
    )
    lines = out.strip().splitlines()
    assert "detectron2._C stand-in" in lines[0] and "PIL.Image.LINEAR" in lines[0]
    assert lines[1] == "True True True"


def test_without_bridge_detectron2_import_fails():
    # Proves the two tests above exercise the bridge: without it detectron2.layers cannot import.
    proc = _run(_REMOVE_STARTUP_HOOK + "import detectron2.layers\n")
    assert proc.returncode != 0
    assert "detectron2._C" in proc.stderr or "_C" in proc.stderr


def test_stand_in_hides_dunder_attributes():
    out = _check(
        """
        import mask_former
        from detectron2 import _C
        print(hasattr(_C, "__wrapped__"), hasattr(_C, "__torch_function__"), callable(_C.nms))
        """
    )
    assert out.strip() == "False False True"


def test_compiled_extension_present_patches_nothing():
    # A fake compiled detectron2._C, served by a finder of its own, stands for a real build. The
    # bridge is the one the start-up hook installed; the package itself is not imported (it
    # imports modules that need the restored Pillow name).
    out = _check(
        """
        import importlib.abc, importlib.machinery, sys, types

        class FakeCompiled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                if name == "detectron2._C":
                    return importlib.machinery.ModuleSpec(name, self, origin="/fake/_C.so")
            def create_module(self, spec):
                m = types.ModuleType(spec.name)
                m.IS_FAKE_COMPILED = True
                return m
            def exec_module(self, module):
                pass

        sys.meta_path.append(FakeCompiled())
        d2_compat = sys.modules["mask_former.d2_compat"]
        d2_compat.install()
        import numpy as np
        from PIL import Image
        import detectron2
        from detectron2 import _C
        print(getattr(_C, "IS_FAKE_COMPILED", False), d2_compat.patched)
        print("int" in vars(np), "object" in vars(np), hasattr(Image, "LINEAR"))
        """
    )
    lines = out.strip().splitlines()
    assert lines == ["True []", "False False False"]


def test_install_is_idempotent():
    out = _check(
        """
        import sys
        import mask_former
        from mask_former import d2_compat
        d2_compat.install(); d2_compat.install()
        print(sum(getattr(f, "_mask_former_d2_compat", False) for f in sys.meta_path))
        """
    )
    assert out.strip() == "1"


def _run_warnings_always(code: str, tmp_path) -> subprocess.CompletedProcess:
    # -W always: every warning is printed, each time; the user module is a file so that
    # torch.jit.script can read its source.
    (tmp_path / "user_module.py").write_text(
        "import torch\n\n\n@torch.jit.script\ndef double(x: int) -> int:\n    return 2 * x\n"
    )
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )


_JIT_WARNING = "FutureWarning: `torch.jit.script` is deprecated"


def test_known_import_time_warnings_are_ignored_only_where_they_come_from(tmp_path):
    proc = _run_warnings_always(
        """
        import mask_former
        import detectron2.engine, detectron2.modeling  # fvcore.nn.focal_loss, box_regression
        import warnings
        warnings.warn("a warning of the user's own", FutureWarning)
        import user_module  # the same torch warning from any other module is still shown
        print(user_module.double(3), sorted(p.split(":")[0] for p in mask_former.d2_compat.patched
                                            if "ignored" in p))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip()
    assert out == "6 ['detectron2.modeling.box_regression', 'fvcore.nn.focal_loss']", out
    assert proc.stderr.count(_JIT_WARNING) == 1, proc.stderr  # the user module's one
    assert "FutureWarning: a warning of the user's own" in proc.stderr


def test_without_quiet_imports_detectron2_imports_warn(tmp_path):
    # Proves the test above exercises the bridge: with its list of quiet imports emptied, the
    # dependencies raise the warning (two scripted functions in each module).
    proc = _run_warnings_always(
        """
        import sys
        sys.modules["mask_former.d2_compat"].QUIET_IMPORTS.clear()
        import detectron2.engine, detectron2.modeling
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(_JIT_WARNING) >= 4, proc.stderr


def test_known_run_time_warnings_are_ignored_only_from_their_modules(tmp_path):
    # The message NumPy 2 gives for an __array__ without a copy keyword, attributed to various
    # modules; then the real pycocotools call that raises it under NumPy 2.
    proc = _run_warnings_always(
        """
        import warnings
        import mask_former
        message = "__array__ implementation doesn't accept a copy keyword, so passing copy=False"
        for module in ["pycocotools.mask", "detectron2.evaluation.sem_seg_evaluation",
                       "user_module", "pycocotools.mask_of_mine"]:
            warnings.warn_explicit(message, DeprecationWarning, module + ".py", 1, module=module)
        import numpy as np
        import pycocotools.mask
        rle = pycocotools.mask.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
        print(pycocotools.mask.decode(rle).sum())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "16"
    shown = [line for line in proc.stderr.splitlines() if "copy keyword" in line]
    expected = ["user_module.py", "pycocotools.mask_of_mine.py"]
    assert [line.split(":")[0] for line in shown] == expected, proc.stderr

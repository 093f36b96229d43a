#!/usr/bin/env bash
# Create or update the project's virtual environment (called by `make setup`).
#   VENV=/path/to/venv   use that environment instead of .venv (created if missing). If it
#                        already has torch or a compiled detectron2, they are left in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip() { "$py" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }

pip install -q wheel
if ! "$py" -c "import torch" 2>/dev/null; then
    pip install -q -r requirements/torch.txt
fi
pip install -q -r requirements/base.txt -r requirements/interop.txt
# Distributions whose declared dependencies are wrong for this environment (see the file).
pip install -q --no-deps -r requirements/no-deps.txt
"$py" dev/install_detectron2.py
pip install -q --no-deps --no-build-isolation -e .

# Start-up hook: bridge detectron2 0.6 in every interpreter of this environment, whether a
# script imports mask_former or detectron2 first (see mask_former/d2_compat.py). The module is
# loaded from its file and registered as mask_former.d2_compat, so the package reuses it and the
# package itself is not imported at start-up.
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
compat="$(pwd)/mask_former/d2_compat.py"
cat > "$site/mask_former_d2_compat.pth" <<PTH
import sys; exec("try:\n import importlib.util as u\n s = u.spec_from_file_location('mask_former.d2_compat', r'$compat')\n m = u.module_from_spec(s); s.loader.exec_module(m); m.install()\n sys.modules.setdefault(s.name, m)\nexcept Exception as e:\n sys.stderr.write('mask_former: detectron2 compatibility hook not installed (%s)\\\\n' % e)")
PTH
"$py" -c "import mask_former, detectron2.modeling; print('environment ready:', '$VENV')"

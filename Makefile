# Two commands for users: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask_former-setup

.PHONY: setup test demo compare bench lint app browser-test
setup: $(STAMP)

$(STAMP): requirements/torch.txt requirements/base.txt requirements/interop.txt requirements/no-deps.txt setup.py dev/setup_env.sh dev/install_detectron2.py
	VENV=$(VENV) bash dev/setup_env.sh
	@touch $@

# The page tests in a real browser have their own target (browser-test), run by .ci/run.
test: setup
	$(PY) -m pytest -q tests --ignore=tests/browser

# The local web demo's optional requirements (Gradio, requirements/app.txt) into .venv, with
# base.txt's pins kept. Then `.venv/bin/python demo/app.py` serves the latest `make demo` model
# on http://127.0.0.1:7860 (--config-file/--weights for another model, --port for another port).
app: setup
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q -r requirements/base.txt -r requirements/app.txt
	@echo "Gradio installed. Start the page with: $(PY) demo/app.py, then open http://127.0.0.1:7860"

# The page tests (tests/browser/) in headless Chromium, driven by Selenium: Debian's chromium
# and chromium-driver must be installed (.ci/run installs them); no browser is downloaded.
browser-test: setup
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q -r requirements/base.txt -r requirements/browser.txt -r requirements/app.txt
	$(PY) -m pytest -q tests/browser

# The main job: generate the shapes dataset, train a tiny MaskFormer from scratch on the CPU into
# a fresh output/demo_<time>/ folder, evaluate (PQ, mIoU) and draw validation predictions.
demo: setup
	$(PY) dev/main_job.py

# MaskFormer vs the per-pixel baseline with the same budget: results.md and miou_vs_iter.png.
compare: setup
	$(PY) dev/compare_baseline.py

# Quick benchmark (under 10 minutes on 2 cores; tools/benchmark.py): inference latency of the R50
# and Swin-T ADE20K models, a training iteration's time and peak memory, the matcher, the shapes
# mapper and evaluation, and the time and GFLOP/s of each model part, as markdown tables and
# output/benchmark_<time>.json. Also: --full, --baseline CHECKOUT, --device cuda --dtype bfloat16.
# The shapes training-step figures quoted in the configs (float32 vs bfloat16 AMP, loader
# hand-over) come from dev/bench_train_step.py.
bench: setup
	$(PY) tools/benchmark.py

# Lint and the enforced formatting (`ruff format .` fixes the latter).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

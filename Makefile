# Two commands for users: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask_former-setup

.PHONY: setup test demo compare bench lint
setup: $(STAMP)

$(STAMP): requirements/torch.txt requirements/base.txt setup.py dev/setup_env.sh dev/install_detectron2.py
	VENV=$(VENV) bash dev/setup_env.sh
	@touch $@

test: setup
	$(PY) -m pytest -q tests

# The main job: generate the shapes dataset, train a tiny MaskFormer from scratch on the CPU into
# a fresh output/demo_<time>/ folder, evaluate (PQ, mIoU) and draw validation predictions.
demo: setup
	$(PY) dev/main_job.py

# MaskFormer vs the per-pixel baseline with the same budget: results.md and miou_vs_iter.png.
compare: setup
	$(PY) dev/compare_baseline.py

# Median timings of a training step (float32 vs bfloat16 AMP), the matcher and the data loader.
bench: setup
	$(PY) dev/bench_train_step.py

# Lint and the enforced formatting (`ruff format .` fixes the latter).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

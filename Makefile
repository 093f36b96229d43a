# Two commands for users: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask_former-setup

.PHONY: setup test demo compare bench lint
setup: $(STAMP)

$(STAMP): requirements/torch.txt requirements/base.txt requirements/interop.txt requirements/no-deps.txt setup.py dev/setup_env.sh dev/install_detectron2.py
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

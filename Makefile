# Two commands for users: `make demo` (the main job) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mask_former-setup

.PHONY: setup test demo lint
setup: $(STAMP)

$(STAMP): requirements/torch.txt requirements/base.txt setup.py dev/setup_env.sh dev/install_detectron2.py
	VENV=$(VENV) bash dev/setup_env.sh
	@touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) dev/smoke_check.py

lint: setup
	$(PY) -m ruff check .

# `make test` and `make demo` work on a fresh machine: each builds the pinned environment first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements/dev.txt pyproject.toml | md5sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/.venv/hf-home
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env test demo

env: $(STAMP)

# torch is pinned to the local 2.13.0 CPU wheel: a bare `torch` requirement would pull a 5.5 GB CUDA build.
$(STAMP): requirements/dev.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements/dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

# pytest exits 5 when it collected nothing: that is a failure here, never a silent pass.
test: env
	mkdir -p $(HF_HOME)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The main job: sample data (or DEMO_ARGS="--aras400k_dir /path/to/zips"), training, evaluation, prediction.
demo: env
	mkdir -p $(HF_HOME)
	$(VENV)/bin/python scripts/demo.py --overwrite $(DEMO_ARGS)

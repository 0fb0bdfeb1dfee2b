# `make test` and `make demo` work on a fresh machine: each builds the pinned environment first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements/dev.txt pyproject.toml | md5sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/.venv/hf-home
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env test demo system-packages lint app

env: $(STAMP)

# Debian packages the tests use: tcmalloc (the allocator the README recommends, tested by test_allocator.py),
# Chromium and its driver (the Space's browser test), GDAL's command-line tools (ogrinfo reads the GeoPackage).
SYSTEM_PACKAGES := libgoogle-perftools4 chromium chromium-driver gdal-bin
system-packages:
	@if ! dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
		else echo "install the Debian packages $(SYSTEM_PACKAGES) (needs root)" >&2; exit 1; fi; \
	fi

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# torch is pinned to the local 2.13.0 CPU wheel: a bare `torch` requirement would pull a 5.5 GB CUDA build.
$(STAMP): requirements/dev.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements/dev.txt
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

# pytest exits 5 when it collected nothing: that is a failure here, never a silent pass.
test: env system-packages lint
	mkdir -p $(HF_HOME)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The main job: sample data (or DEMO_ARGS="--aras400k_dir /path/to/zips"), training, evaluation, prediction.
demo: env
	mkdir -p $(HF_HOME)
	$(VENV)/bin/python scripts/demo.py --overwrite $(DEMO_ARGS)

# The Space (spaces/lale/app.py) on the checkpoint `make demo` trains, trained first when missing.
# APP_ARGS="--port 7861 --max_megapixels 64" passes options on.
DEMO_MODEL := outputs/demo/lale-tiny
app: env
	@test -f $(DEMO_MODEL)/model.safetensors || $(MAKE) demo
	mkdir -p $(HF_HOME)
	$(VENV)/bin/python spaces/lale/app.py --model $(DEMO_MODEL) $(APP_ARGS)

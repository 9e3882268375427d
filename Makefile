# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
REALDATA ?= ../shared/realdata
DEMO_MODEL  ?= $(REALDATA)/models/yolov8n-seg-640-fp32-reconstructed.onnx
DEMO_SOURCE ?= $(REALDATA)/coco_val2017_subset/images
DEMO_OUT    ?= out/demo

.PHONY: demo test setup lint typecheck clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	@echo "demo: no bundled edgeseg demo model yet; running the real COCO yolov8n-seg from $(REALDATA)"
	$(VENV)/bin/edgeseg run --model $(DEMO_MODEL) --source $(DEMO_SOURCE) \
		--sink jsonl:$(DEMO_OUT)/results.jsonl --sink video:$(DEMO_OUT)/annotated

test: setup
	$(VENV)/bin/ruff check edgeseg export tests
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info

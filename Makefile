# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
REALDATA ?= ../shared/realdata
DEMO_MODEL  ?= $(REALDATA)/models/yolov8n-seg-640-fp32-reconstructed.onnx
DEMO_SOURCE ?= $(REALDATA)/coco_val2017_subset/images
DEMO_OUT    ?= out/demo

.PHONY: demo test test-compat test-py38 test-py310 setup lint typecheck clean typings system-deps

# TrackEval (HOTA, MOTA, IDF1 for `edgeseg eval-tracks`) without its declared dependencies: its
# metadata asks for numpy >= 2.2 on Python 3.10 and >= 1.24 on 3.8 (neither needed: it runs on
# numpy 1.23 to 2.x here) and for the GUI opencv-python beside our headless one. Its real needs
# (numpy, scipy) are the runtime's own; tabulate only for its table printing.
TRACKEVAL := 'trackeval>=1.3,<2' 'tabulate>=0.9'
# The OpenVINO backend (the `openvino` extra) and NNCF, its int8 post-training quantisation, in
# the main venv only: the runtime's compat venvs (3.8, 3.10) test without them (their OpenVINO
# tests skip), as a Jetson has no OpenVINO.
OPENVINO := 'openvino>=2024.0' 'nncf>=2.10'

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,export]'
	$(PY) -m pip install --quiet --no-deps $(TRACKEVAL)
	$(PY) -m pip install --quiet $(OPENVINO)
	touch $@

setup: $(VENV)/.installed

# The main job on the CPU default: the bundled demo student (engines/demo, trained by the recipes
# in export/recipes/) on the deterministic synthetic demo video; without that bundle, the real
# COCO yolov8n-seg of ../shared/realdata on its images.
DEMO_BUNDLE ?= engines/demo
demo: setup
	@if [ -f $(DEMO_BUNDLE)/manifest.json ]; then \
		echo "demo: bundled student $(DEMO_BUNDLE) on the synthetic demo video"; \
		$(VENV)/bin/edgeseg synth --out $(DEMO_OUT) --train 0 --val 0 --video $(DEMO_OUT)/demo.mp4 && \
		$(VENV)/bin/edgeseg run --model $(DEMO_BUNDLE) --source $(DEMO_OUT)/demo.mp4 \
			--sink jsonl:$(DEMO_OUT)/results.jsonl --sink video:$(DEMO_OUT)/annotated.mp4; \
	else \
		echo "demo: no bundle in $(DEMO_BUNDLE); running the real COCO yolov8n-seg from $(REALDATA)"; \
		$(VENV)/bin/edgeseg run --model $(DEMO_MODEL) --source $(DEMO_SOURCE) \
			--sink jsonl:$(DEMO_OUT)/results.jsonl --sink video:$(DEMO_OUT)/annotated; \
	fi

# System packages the tests use for real: a Mosquitto broker, systemd-analyze, headless Chromium.
# Installed only where missing and only as root with apt (CI, a fresh device); elsewhere the tests
# that need them skip and say why.
SYSTEM_PACKAGES := mosquitto systemd chromium chromium-driver openssl
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "not installed (tests using them will skip): $$missing"; fi

test: setup typings system-deps
	$(VENV)/bin/ruff check edgeseg export tests
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

# The runtime's tests on the Pythons of the Jetsons in the field, with the numpy their JetPack's
# bindings accept: JetPack 5 = Python 3.8 + numpy < 1.24 (TensorRT 8.5 uses np.bool), JetPack 6 =
# Python 3.10 + numpy < 2. Same test files as `make test`; those of the export stage (torch,
# Python 3.10+) are left out where they cannot run, and the run says which (tests/conftest.py).
# The interpreters come from pyenv (as on CI machines) or PATH; nothing is installed by hand.
PYENV_ROOT ?= $(HOME)/.pyenv
find_python = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python3))),$(shell command -v python$(1)))
PY38  ?= $(call find_python,3.8)
PY310 ?= $(call find_python,3.10)

test-compat: test-py38 test-py310

.venv-py%/.installed: setup.py
	@test -n "$(PYTHON_$*)" || { echo "no Python for .venv-py$* (install it with pyenv)"; exit 1; }
	$(PYTHON_$*) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install --quiet --upgrade pip
	.venv-py$*/bin/python -m pip install --quiet -e '.[dev]' '$(NUMPY_$*)'
	.venv-py$*/bin/python -m pip install --quiet --no-deps $(TRACKEVAL)
	touch $@

PYTHON_38 = $(PY38)
PYTHON_310 = $(PY310)
NUMPY_38 = numpy==1.23.5
NUMPY_310 = numpy==1.26.4

test-py38 test-py310: test-py%: .venv-py%/.installed system-deps
	.venv-py$*/bin/python -c 'import sys, numpy; print("runtime tests on Python", sys.version.split()[0], "numpy", numpy.__version__)'
	.venv-py$*/bin/pytest -q

clean:
	rm -rf $(VENV) .venv-py38 .venv-py310 out build *.egg-info typings

# TensorRT type stubs for mypy (docs/tensorrt.md, "Static checking"), unpacked rather than installed: the wheel
# has no py.typed (so mypy would not use it), and installed it would make `import tensorrt`
# succeed as an empty package and hide that TensorRT is absent. Two syntax errors of the 10.13
# stubs (parameters named `in`, a non-default parameter after defaults) are patched, because mypy
# stops at syntax errors even in modules whose errors it ignores; the parse check fails loudly if
# a future stub version brings new ones. typings/ is gitignored; stubs/ (pycuda) is tracked.
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
TRT_STUB_FILES := typings/tensorrt/__init__.pyi typings/tensorrt_bindings/__init__.pyi \
	typings/tensorrt_bindings/tensorrt.pyi

typings: typings/.stamp

typings/.stamp: | $(VENV)/.installed
	rm -rf typings typings.tmp
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: $(TRT_STUBS) -d "$$tmp" && \
	$(PY) -m zipfile -e "$$tmp"/tensorrt_stubs-*.whl "$$tmp/wheel" && \
	mkdir typings.tmp && cp -r "$$tmp/wheel/tensorrt" "$$tmp/wheel/tensorrt_bindings" typings.tmp/
	sed -i -e 's/\([(,] *\)in: /\1in_: /g' \
		-e 's/\(power: Weights = None, channel_axis: int\))/\1 = ...)/' typings.tmp/tensorrt_bindings/tensorrt.pyi
	$(PY) -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' $(TRT_STUB_FILES:typings/%=typings.tmp/%)
	mv typings.tmp typings && touch $@

# Install the daemon as a systemd service (run as root on the device):
#   sudo make install [PREFIX=/opt/edgeseg] && sudo systemctl enable --now edgeseg
# The venv is decided by edgeseg/platform/install.py (stdlib only; `make install-plan` prints it):
# on a Jetson, the system Python with --system-site-packages (JetPack's TensorRT and GStreamer
# OpenCV), numpy pinned per JetPack, no PyPI OpenCV where the system's imports, pycuda built
# against /usr/local/cuda; elsewhere a plain venv. It ends with `edgeseg doctor`, whose FAILs do
# not fail the install (a fresh device has no bundle yet).
PREFIX  ?= /opt/edgeseg
UNITDIR ?= /etc/systemd/system
.PHONY: install install-plan
install:
	id -u edgeseg >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edgeseg --no-create-home \
		--shell /usr/sbin/nologin --groups video edgeseg
	$(PYTHON) -m edgeseg.platform.install --prefix $(PREFIX) --python $(PYTHON)
	install -m 0644 README.md $(PREFIX)/README.md
	install -d -m 0755 /etc/edgeseg /var/lib/edgeseg/engines
	test -f /etc/edgeseg/config.yaml || install -m 0640 -g edgeseg configs/service.yaml /etc/edgeseg/config.yaml
	sed 's|/opt/edgeseg|$(PREFIX)|g' systemd/edgeseg.service > $(UNITDIR)/edgeseg.service
	chown -R edgeseg:edgeseg /var/lib/edgeseg
	systemctl daemon-reload 2>/dev/null || true
	-$(PREFIX)/venv/bin/edgeseg doctor --config /etc/edgeseg/config.yaml
	@echo "installed: flash a bundle with '$(PREFIX)/venv/bin/edgeseg engines install --activate BUNDLE',"
	@echo "edit /etc/edgeseg/config.yaml, then 'systemctl enable --now edgeseg'"

install-plan:
	$(PYTHON) -m edgeseg.platform.install --prefix $(PREFIX) --python $(PYTHON) --dry-run

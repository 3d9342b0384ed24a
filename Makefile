# Quick start: `make demo` and `make test`. Both create or refresh .venv and install the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-compat install bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata changes; the source is installed editable.
# torch/torchvision are pinned to the releases this project is tested with; on machines whose
# pip has no local copy they come from PyPI as usual. The demo needs only the core dependencies
# (STAMP_CORE); the tests add the extras (scikit-learn/-image, TensorBoard, ONNX, huggingface_hub,
# pytest, import-linter). --no-compile: pip would byte-compile every module of torch at install
# (about 25 s of a 2-core machine's 90); Python compiles the few hundred the demo imports at first use.
# Where PYTHONDONTWRITEBYTECODE is set, Python then recompiles them in every process (about 10 s
# each), which the test suite's many subprocesses would pay hundreds of times: the test install
# byte-compiles the environment once, on all cores (compileall's failures on files no Python reads,
# such as vendored Python 2 sources, are ignored, as pip ignores them).
PIP := $(PY) -m pip install -q --no-compile
STAMP_CORE := $(VENV)/.installed-core
$(STAMP_CORE): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) "torch==2.14.1" "torchvision==0.29.1" || $(PIP) torch torchvision
	$(PIP) -e .
	touch $(STAMP_CORE)

$(STAMP): $(STAMP_CORE)
	$(PIP) -e ".[all]"
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP_CORE)
	$(VENV)/bin/alexnet demo

# lint-imports: the layer contract in pyproject.toml (a backward import fails here). The documentation
# site is built with --strict (a few seconds): a broken link, a missing page, a results folder that no
# longer reads or a docstring mkdocstrings cannot parse fails the tests.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(DOCS_CHECK)
	rm -rf $(DOCS_CHECK)
	$(PY) -m pytest

# The documentation site (docs/, mkdocs.yml) into site/: the CLI reference, the results tables and
# the design page are generated at build time (docs/hooks.py). `mkdocs serve` previews it.
DOCS_CHECK := .site-check
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build

bench: $(STAMP)
	$(PY) benchmarks/demo_time.py

# The GPU machine's preinstalled stack (torch 2.11, torchvision 0.26, no TorchCodec), in a second
# venv: `make test-compat` runs the GPU-relevant tests on it (models, LRN, the fast step, loader,
# augmentation, JPEG codecs, the benchmarks' library and preflight, the loops' host syncs, and `benchmarks/gpu.py --device cpu
# --tiny`, which tests/test_bench_gpu.py runs and checks). Not part of `make test`.
# PyPI's Linux torch wheels are CUDA builds: the first run downloads about 3 GB. The GPU machine runs
# Python 3.12: `make test-compat COMPAT_PYTHON=python3.12` matches it where that Python is installed.
COMPAT_PYTHON ?= $(PYTHON)
COMPAT_VENV := .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_TESTS := tests/test_models.py tests/test_lrn_fast.py tests/test_fast_step.py tests/test_bench_gpu.py \
	tests/test_perf.py tests/test_loader.py tests/test_augment.py tests/test_jpeg.py tests/test_optim.py tests/test_gpu_path.py

$(COMPAT_STAMP): pyproject.toml
	$(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q "torch==2.11.0" "torchvision==0.26.0"
	$(COMPAT_PY) -m pip install -q -e ".[test,baselines]"  # baselines: scikit-image, for bench data's photos
	$(COMPAT_PY) -m pip uninstall -q -y torchcodec  # the GPU machine has none: the torchvision fallback is tested
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	$(COMPAT_PY) -m pytest $(COMPAT_TESTS)

clean:
	rm -rf $(VENV) $(COMPAT_VENV) runs site

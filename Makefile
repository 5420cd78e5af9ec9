# Both targets set up their virtual environments themselves, from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

# The oldest supported Keras and TensorFlow (.ci/oldest.txt, setup.cfg's lower bounds).
VENV_OLDEST := .venv-oldest
PY_OLDEST := $(VENV_OLDEST)/bin/python
OLDEST_STAMP := $(VENV_OLDEST)/.installed-$(shell cat setup.cfg .ci/oldest.txt | cksum | cut -d' ' -f1)

# torch for the torch-backend run: the CPU build (pip takes it from the local file where
# the machine has one; a plain `torch` would fetch a CUDA build of several GB). Installed
# with the rest, so that no install runs beside a test run in the same environment.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell (cat setup.cfg; echo "$(TORCH)") | cksum | cut -d' ' -f1)

# The library's own tests: every cell and layer against the NumPy reference.
LIBRARY_TESTS := tests/test_layer_norm.py tests/test_batch_norm.py tests/test_layers.py tests/test_normalization.py \
	tests/test_degenerate_inputs.py tests/test_compat.py tests/test_errors.py tests/test_addons.py
SECONDARY := -q -p no:cacheprovider

.PHONY: test test-tensorflow test-jax test-torch test-oldest demo docs clean gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,examples,docs]" "$(TORCH)"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(PY_OLDEST):
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(PY_OLDEST) -m pip install --quiet --upgrade pip

$(OLDEST_STAMP): $(PY_OLDEST) setup.cfg pyproject.toml .ci/oldest.txt
	$(PY_OLDEST) -m pip install --quiet -c .ci/oldest.txt -e . pytest pytest-timeout
	rm -f $(VENV_OLDEST)/.installed-*
	touch $(OLDEST_STAMP)

# Four runs, two at a time (each prints when it ends): the whole suite on TensorFlow with
# the newest releases; the library tests on the oldest supported releases; the layers on
# JAX (where a variable can't be updated inside the loop: the BN layers must update after
# it; the fused loop is a custom_vjp scan) and the zero-input gradients there; the library
# tests on torch.
# The whole suite includes the documentation site's strict build (tests/test_docs.py).
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target test-tensorflow test-oldest test-jax test-torch

test-tensorflow: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-oldest: $(OLDEST_STAMP)
	$(PY_OLDEST) -m pytest $(SECONDARY) $(LIBRARY_TESTS)

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest $(SECONDARY) tests/test_layers.py tests/test_degenerate_inputs.py

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest $(SECONDARY) $(LIBRARY_TESTS)

# The demo needs only the `examples` extra (no test tools), the documentation site only
# `docs`. A stamp per extra, so that the targets' installs don't undo each other.
CONFIG_SUM := $(shell cat setup.cfg | cksum | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.extra-examples-$(CONFIG_SUM)
DOCS_STAMP := $(VENV)/.extra-docs-$(CONFIG_SUM)

$(VENV)/.extra-%-$(CONFIG_SUM): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e ".[$*]"
	rm -f $(VENV)/.extra-$*-*
	touch $@

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

# The wheels a lent GPU machine lacks (it has Python 3.12, torch and JAX, no Keras): Keras at
# the version of this venv and the dependencies of it the machine doesn't have, into .whl,
# which benchmarks/gpu.sh installs there (docs/throughput.md, section GPU).
gpu-wheels: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu.sh --download-wheels .whl

# The documentation site (mkdocs.yml: README.md, docs/, the API reference) into build/site,
# warnings printed; `make test` builds it with --strict, where a warning fails.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build

clean:
	rm -rf $(VENV) $(VENV_OLDEST) build dist *.egg-info

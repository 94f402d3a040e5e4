# The two commands a new user types: `make run` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
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
	rm -rf $(VENV) run/*.sock build *.egg-info

# Pooldesk: `make run` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
STAMP := $(VENV)/.installed

.PHONY: run test setup migrate demo worker bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

migrate: setup
	$(BIN)/pooldesk migrate

# First run: migrate and load demo data once (data/.demo-loaded marks it done).
demo: migrate
	@test -f data/.demo-loaded || ($(BIN)/pooldesk seed-demo --demo-logins && touch data/.demo-loaded)

run: demo
	$(BIN)/streamlit run app/main.py --server.port $(PORT)

worker: setup
	$(BIN)/pooldesk worker

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data/*.db data/*.db-* data/.demo-loaded

# chatsite: `make run` serves the site, `make test` runs the tests. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv run test lint serve bench real-model clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: venv
	$(BIN)/python -m chatsite.dev.run

test: venv
	$(BIN)/pytest -n 3  # three processes: most tests wait on real servers, not on the CPU

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

serve: venv
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/resume.py  # /resume to first line under load; chatfile CPU vs before #18
	$(BIN)/python bench/search.py  # /search-chats p95 (PostgreSQL with CHATSITE_TEST_DATABASE_URL)

# llama-cpp-python's server and SmolLM2-135M, for tests/test_real_model.py (skipped without
# them). The first time compiles llama.cpp (about 4 minutes); the wheel is cached after that.
real-model: venv
	.ci/install-real-model

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Two commands do all the set-up:  `make book`  and  `make test`.
# Both create the virtual environment if it is missing, install what is needed, and say what they do.
# Use another interpreter with `make book PYTHON=python3.12`, or an existing environment with `make book VENV=...`.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.companion-installed

.PHONY: book test env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@bash scripts/setup_env.sh "$(PYTHON)" "$(VENV)"

book: $(STAMP)
	@bash scripts/build_book.sh "$(VENV)"

test: $(STAMP)
	@bash scripts/run_tests.sh "$(VENV)"

# Two commands on a fresh machine: `make up` runs the whole stack, `make test` runs the suite.
# Both bootstrap what they need: uv (in a private venv when not on PATH), the workspace,
# and the nats-server / weed binaries, which come from PyPI as workspace dependencies.
PYTHON ?= python3
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
export UV_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
export UV_PYTHON_DOWNLOADS ?= never
PYTEST_ARGS ?=

.PHONY: up test check lint typecheck imports docs clean bootstrap

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade "uv>=0.5"

bootstrap: $(UV)
	$(UV) sync --all-packages --quiet

up: bootstrap
	$(UV) run --no-sync python -m lifeboat.devstack up

test: bootstrap
	$(UV) run --no-sync pytest $(PYTEST_ARGS)

# The quick loop: lint, types, package boundaries and the unit tests (no servers), in seconds.
check: bootstrap
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync mypy libs services tests bench
	$(UV) run --no-sync lint-imports
	$(UV) run --no-sync pytest -q tests/unit --deselect tests/unit/test_quality.py::test_clean

lint: bootstrap
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .

typecheck: bootstrap
	$(UV) run --no-sync mypy libs services tests bench

imports: bootstrap
	$(UV) run --no-sync lint-imports

docs: bootstrap
	$(UV) run --no-sync faststream docs gen lifeboat.common.asyncapi:app --yaml --out docs/asyncapi.yaml
	$(UV) run --no-sync python -m lifeboat.devstack.configdoc > docs/configuration.md

clean:
	@if [ -e .lifeboat/stack.lock ] && ! $(PYTHON) -c "import fcntl,sys; f=open('.lifeboat/stack.lock'); fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)" 2>/dev/null; then \
		echo "make clean: the stack is running (make up holds .lifeboat/stack.lock); stop it first"; exit 1; fi
	@# PostgreSQL data kept outside the clone (see LIFEBOAT_PG_DATA_ROOT) goes too.
	@if [ -L .lifeboat/pg ]; then rm -rf "$$(dirname "$$(readlink .lifeboat/pg)")"; fi
	rm -rf .lifeboat

# Two entry points: `make demo` and `make test`. Both build the project-local
# .venv on first use and rebuild it whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test soak lint bench venv clean test-tools

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/imednet-flows demo

# What a person sees is tested with Debian's tools: chromium for the Prefect UI (Playwright
# cannot download a browser here; tests/ui/test_browser.py) and tmux for progress bars on a
# terminal (tests/cli/test_progress.py). Installed when missing, without prompts (CI has no
# stdin).
CHROMIUM ?= /usr/bin/chromium
test-tools:
	@missing=""; test -x $(CHROMIUM) || missing="chromium"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing for the tests of what a person sees (apt-get)"; \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing </dev/null; }

# Two worker processes, each with its own Prefect API: a test file runs whole on one of
# them (tests/conftest.py). `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2
test: $(STAMP) test-tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The sync's state machine at length (tests/sync/test_model.py). It prints its seed;
# `make soak SEED=<n>` replays that run.
soak: $(STAMP)
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "sync model soak: seed $$seed (replay: make soak SEED=$$seed)"; \
	IMEDNET_FLOWS_SOAK=1 IMEDNET_FLOWS_SOAK_SEED=$$seed \
		$(BIN)/python -m pytest tests/sync/test_model.py -q -n 0 --timeout=3600

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/emulator_throughput.py

clean:
	rm -rf $(VENV) .prefect .pytest_cache

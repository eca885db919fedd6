# Fetch ML — every target creates the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/server.yaml

.PHONY: serve test lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/fetchml serve --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check fetchml tests bench
	$(BIN)/ruff format --check fetchml tests bench
	$(BIN)/mypy fetchml tests

# The dashboard's browser tests drive Debian's chromium and chromium-driver: installed here when
# missing (as root, with apt-get); where they cannot be, those tests skip and say why.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(BROWSER_PACKAGES) for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null 2>&1 \
	      || { apt-get update -qq >/dev/null 2>&1 \
	           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null 2>&1; } \
	      || echo "could not install $(BROWSER_PACKAGES): the browser tests will be skipped"; \
	  else \
	    echo "$(BROWSER_PACKAGES) missing and not installable here (root + apt-get): the browser tests will be skipped"; \
	  fi; \
	fi

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@failed=""; for script in bench/bench_*.py; do echo "== $$script"; \
		$(BIN)/python $$script || failed="$$failed $$script"; done; \
	if [ -n "$$failed" ]; then echo "goals missed in:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

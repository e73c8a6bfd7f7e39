# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install demo test bench clean fashion-mnist postgresql chromium screenshots

install: $(STAMP) fashion-mnist postgresql chromium

# Fashion-MNIST (real data, offline) comes from Debian's dataset-fashion-mnist package; the tests
# need it, so a failed install stops make here, loudly.
fashion-mnist:
	@test -f $(FASHION) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  || { echo "make: cannot install the Debian package dataset-fashion-mnist (needed by the tests and the demo)" >&2; exit 1; }

# A real PostgreSQL server for tests/test_postgres.py (the test starts it on a temporary folder).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
	  || { echo "make: cannot install the Debian package postgresql (needed by the tests)" >&2; exit 1; }

# Headless Chromium and its WebDriver for tests/test_browser.py (the MLflow UI as a person sees it).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  || { echo "make: cannot install the Debian packages chromium and chromium-driver (needed by the tests)" >&2; exit 1; }

# Re-installs only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/peft-search demo

test: install
	$(BIN)/python -m pytest -q

# The README's MLflow UI screenshots, taken by the browser test on a fresh small study.
screenshots: install
	PEFT_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/test_browser.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) build *.egg-info

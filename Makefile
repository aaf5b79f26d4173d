# The two set-up commands (see README): `make demo` runs the main job, `make test` the test suite.
# Both create .venv and install everything the project needs, system packages included.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash infra/setup-system.sh

demo: $(STAMP) system-deps
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/xregion demo

test: $(STAMP) system-deps
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest

clean:
	-$(VENV)/bin/xregion down
	rm -rf .xregion

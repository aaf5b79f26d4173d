# The two set-up commands (see README): `make demo` runs the main job, `make test` the test suite.
# Both create .venv and install everything the project needs, system packages included.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash infra/setup-system.sh

demo: $(STAMP) system-deps
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/xregion demo

# the fast inner loop: lint plus every test that needs no running stack (under 90 s)
check: $(STAMP) lint
	$(VENV)/bin/pytest -m "not stack" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the whole suite, as CI runs it: three pytest-xdist workers, each test file on one of them (a
# module's own stack stays in its worker); the stack tests mostly wait on real processes, so three
# workers keep two cores busy. TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 3
test: $(STAMP) system-deps lint
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

clean:
	-$(VENV)/bin/xregion down
	rm -rf .xregion

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
# (system-deps: the front-door tests run `haproxy -c` on every rendered config, and need no stack)
# two workers (pytest-xdist): these tests are CPU-bound, and one process used one core of two
check: $(STAMP) system-deps lint
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -m "not stack" -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the whole suite, as CI runs it, serially: on two cores, parallel workers (pytest-xdist) do not pay.
# Two took 36.6 min against 36.5 serially and failed a drill under the contention; three took as
# long and failed timing-bound tests (failure detection, bake windows)
test: $(STAMP) system-deps lint
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest --durations=30

clean:
	-$(VENV)/bin/xregion down
	rm -rf .xregion

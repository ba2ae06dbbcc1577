# hazgate: every target sets up its own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	@command -v mosquitto >/dev/null 2>&1 || { \
	  echo "mosquitto is missing; installing it with apt-get"; \
	  { apt-get update && apt-get install -y mosquitto; } >/dev/null 2>&1 \
	  || echo "could not install mosquitto: run 'apt-get install mosquitto' as root"; }
	$(BIN)/hazgate demo

test: $(STAMP)
	@missing=""; for c in mosquitto socat faketime chromium; do \
	  command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing the test peers:$$missing"; \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y$$missing; } >/dev/null; \
	  else echo "the tests need$$missing: run 'sudo apt-get install -y$$missing', then make test again"; exit 2; fi; fi
	$(BIN)/ruff check agent drivers tests bench
	$(BIN)/lint-imports
	# mostly waiting on peers: three workers on two cores; one test (or one module sharing a
	# scripted run, xdist_group) at a time to whichever worker is free, longest first (conftest.py)
	$(BIN)/python -m pytest -q -n 3 --dist loadgroup --no-loadscope-reorder

# quick mode, a few minutes; `make bench BENCH="--full"` for the issue's durations,
# BENCH="--profile" to see where the agent's time goes (py-spy), `python -m bench -h` for more
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

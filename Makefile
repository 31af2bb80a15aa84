# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pip constraints for the install: `make test-lowest` gives the lowest versions setup.cfg accepts.
CONSTRAINTS ?=
HOST   ?= 127.0.0.1
PORT   ?= 5000
FLASK  := $(BIN)/flask --app tenant_analytics
# The limiter's memory:// storage counts per process: two workers would each allow the
# whole limit. One gevent worker serves the quick start; with Redis, workers share counts.
ifneq ($(filter redis%,$(RATELIMIT_STORAGE_URI)),)
WORKERS ?= 2
else
WORKERS ?= 1
endif

.PHONY: install run serve test test-lowest browser lint format bench clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

install: $(STAMP)

## run: install, migrate the database (SQLite by default), load the demo, serve on :5000
run: install
	$(FLASK) db upgrade
	$(FLASK) demo --url http://$(HOST):$(PORT)
	$(MAKE) --no-print-directory serve

# gunicorn, not the development server: it writes no access log with client addresses.
# The gevent worker lets a request wait for its group commit at the cost of a greenlet switch.
# --log-level error: gunicorn names the peer of a malformed request at WARNING.
# --no-control-socket: gunicorn's socket is one per user, lost to any other server's exit.
# --graceful-timeout 100: a stop or reload lets a request wait out its group commit (30 s
# to be taken into a batch, 60 s for the batch) rather than cut it off at gunicorn's 30 s.
serve: install
	@echo "Serving on http://$(HOST):$(PORT) with $(WORKERS) worker(s)  (Ctrl+C to stop)"
	$(BIN)/gunicorn --worker-class gevent --workers $(WORKERS) --worker-connections 1000 \
		--graceful-timeout 100 --log-level error --no-control-socket --bind $(HOST):$(PORT) wsgi:app

## test: the suite (PostgreSQL with TEST_DATABASE_URL, else SQLite; Redis with TEST_REDIS_URL)
test: install browser
	$(BIN)/pytest

## test-lowest: lint and the suite in a venv of its own with the lowest versions setup.cfg allows
test-lowest:
	$(MAKE) --no-print-directory lint test VENV=.venv-lowest CONSTRAINTS=.ci/lowest-versions.txt

# Debian's Chromium and its driver, for tests/test_browser.py. Where they cannot be
# installed the browser tests skip; CI (REQUIRE_BROWSER=1) fails them instead.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		echo "== installing $(BROWSER_PACKAGES) for the browser tests"; \
		$$sudo apt-get install -y $(BROWSER_PACKAGES) \
		|| { $$sudo apt-get update && $$sudo apt-get install -y $(BROWSER_PACKAGES); } \
		|| echo "== could not install Chromium: the browser tests will be skipped"; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: the issue-5 benchmark on PostgreSQL (about 15 minutes; prints one table)
bench: install
	bash bench/run.sh

clean:
	rm -rf $(VENV) .venv-lowest instance build src/*.egg-info

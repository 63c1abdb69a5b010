# Studyhall's tasks, one place. `make` (or `make help`) lists them.
# The README's `bash tests/run.sh` stays the one-line way to run the tests; `make test`
# is the same command, and CI (.ci/run) runs `make lint` and then it.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -p no:cacheprovider
# Extra arguments for pytest or a bench script: make test-fast ARGS="-x -k rooms"
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint bench serve

help: ## this list
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Re-installed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --silent --no-audit --no-fund

install: $(VENV)/.installed node_modules/.package-lock.json ## .venv with Studyhall, test, lint and pre-commit tools; the npm test client (Redis, Chromium: `make test` installs them)

test: ## the full suite, what CI runs (installs what is missing: see tests/run.sh)
	bash tests/run.sh -q -rs $(ARGS)

# The inner loop: ~390 of ~500 tests, every feature's main paths (accounts and sign-in
# limits, validation of HTTP bodies and socket events, threads, the tutor, rooms, tickets
# and the queue, documents and retrieval, identity and API keys, migrations); leaves out
# Chromium, Redis/cluster and `slow` tests (own processes or servers, timers, long loops).
# Measured on this shared 2-core machine: 43 s for 390 tests at load ~1 (`time make
# test-fast`, after the merges of 2026-12-01); it was 106 s for 336 at load ~3.4. Cheap
# argon2 for tests (one test keeps the real cost), databases cloned ahead from a migrated
# template, no fsync: tests/conftest.py and tests/services.py say how.
test-fast: install ## the inner loop: no browser, no Redis/cluster, no slow tests (<1 min)
	$(PYTEST) -q -m "not browser and not cluster and not slow" $(ARGS)

lint: $(VENV)/.installed ## ruff (rules in pyproject.toml), mypy (server handlers storage rag), lint-imports (the layers)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Each benchmark with small defaults (seconds, not minutes); the scripts' docstrings give
# the full-size runs and what the numbers mean. ARGS come after them, and win (argparse).
BENCH_abuse       := bench/abuse_bench.py --limits default --seconds 1 --hash-seconds 5
BENCH_db_outage   := -m bench.db_outage_bench --requests 20
BENCH_pdf_bomb    := bench/pdf_bomb.py --chars 1000000
BENCH_rooms       := bench/rooms_bench.py --participants 50 --instances 1 --client raw --fanout fast --rates 5 --seconds 2 --workers 1 --senders 5
BENCH_threads     := bench/threads_bench.py --seconds 2 --scenario direct --instances 1 --client python
# These two read PostgreSQL's HTML manual (apt-get install postgresql-doc-15, or --docs DIR;
# retrieval_bench also --corpus python: apt-get install python3.11-doc).
BENCH_retrieval   := bench/retrieval_bench.py --skip-scale --pages 60 --embedders onnx,hashing
BENCH_first_token := bench/tutor_first_token.py --pages 20 --questions 20
# Also reads Python's HTML docs (apt-get install python3.11-doc).
BENCH_ingest      := bench/ingest_bench.py --pages 10
# The capacity model (docs/scaling.md): the probe measures its constants, the simulation needs no services.
BENCH_capacity    := bench/capacity_sim.py --size 10000 100000 1000000
BENCH_capacity_probe := bench/capacity_probe.py --seconds 2 --sockets 200 --events 5000
BENCH_conversation := bench/conversation_bench.py --members 10,100 --senders 1 --deliveries 2000,5000 --seconds 2 --workers 1
BENCH_socket_memory := bench/socket_memory_bench.py --sockets 500 --settle 3 --workers 2
# Four instances, per-room Redis channels against the one channel (docs/scaling.md#fan-out-per-room-channels).
BENCH_cluster     := bench/cluster_bench.py --conversations 6 --messages 10 --idle 5
BENCHES := abuse db_outage pdf_bomb rooms threads retrieval first_token ingest capacity capacity_probe conversation socket_memory cluster

bench: $(VENV)/.installed ## list the benchmarks; `make bench B=rooms` runs one with small defaults
ifeq ($(B),)
	@echo "make bench B=NAME [ARGS='...'] runs one of:"
	@$(foreach b,$(BENCHES),echo "  $(b): $(PY) $(BENCH_$(b))";)
else
	$(if $(BENCH_$(B)),,$(error unknown benchmark '$(B)': one of $(BENCHES)))
	$(PY) $(BENCH_$(B)) $(ARGS)
endif

serve: $(VENV)/.installed ## studyhall serve on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)
	$(VENV)/bin/studyhall serve $(ARGS)

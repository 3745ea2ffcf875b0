# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench bench-smoke bench-sql chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the main job end to end against the local Postgres and Redis.
demo: $(STAMP)
	$(BIN)/ezq demo

## Run the whole suite against the local Postgres and Redis (a throwaway database).
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy service

## Hot-path benchmarks, each against its baseline run side by side.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.stream_assembly
	$(BIN)/python -m benchmarks.gateway_request
	$(BIN)/python -m benchmarks.broker_commands
	$(BIN)/python -m benchmarks.live_tokens
	$(BIN)/python -m benchmarks.job_path
	$(BIN)/python -m benchmarks.ranking_plan
	$(BIN)/python -m benchmarks.row_plans
	$(BIN)/python -m benchmarks.backlog_ranking
	$(BIN)/python -m benchmarks.flow_admission
	$(BIN)/python -m benchmarks.webhook_delivery
	$(BIN)/python -m benchmarks.webhook_connections
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.batch
	$(BIN)/python -m benchmarks.sql_usage
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.load --row 5:1000:6000 --steady --paced 0
	$(BIN)/python -m benchmarks.load --row 0:32:3000 --cpu last
	$(BIN)/python -m benchmarks.load --row 0:32:3000 --neighbours 2:0.4
	$(BIN)/python -m benchmarks.load --row 0:32:3000 --neighbours 2:0.4 --cpu last

## The load benchmark with small N (under a minute): one worker against the raw client.
bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.load --smoke

## One million usage rows in a throwaway database: time the docs/sql.md queries and the report.
bench-sql: $(STAMP)
	$(BIN)/python -m benchmarks.sql_usage

## The fault suite: >= 1,000 jobs through two workers while each fault is injected in turn.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# chatsvc — `make run` serves on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CHATSVC_ENV ?= development

.PHONY: install run migrate seed test lint format bench bench-knowledge fuzz clean token soak cluster

install: $(STAMP)

# Reinstalls only when the dependencies change, so a second `make run` starts at once.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

migrate: install
	$(BIN)/flask --app chatsvc db upgrade

# An empty knowledge base gets the project's own README and docs/.
seed: migrate
	$(BIN)/flask --app chatsvc kb seed

run: seed
	exec $(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

# A bearer token for USER (ADMIN=1 adds role=admin), signed with JWT_SECRET or, in
# development, with the secret `make run` keeps in instance/.
token: install
	@$(BIN)/flask --app chatsvc token create $(if $(ADMIN),--admin) -- "$(USER)"

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# P7's peer (FastAPI, uvicorn, aiosqlite) is installed here only: bench/peer/requirements.txt.
bench: install
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		-r bench/peer/requirements.txt
	$(BIN)/python -m bench $(BENCH_ARGS)

# The knowledge base at 1k and 100k passages of real text, SQLite and PostgreSQL (bench/knowledge.py;
# the corpus is built once from pydoc and man pages and cached, as are the databases).
bench-knowledge: install
	$(BIN)/python -m bench.knowledge $(BENCH_ARGS)

# Hypothesis against the chunker and the local agent's parser: the worst ms per kB (< 50).
fuzz: install
	$(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

# The chaos soak (README "Chaos soak"): needs SOAK_DATABASE_URL or TEST_DATABASE_URL
# (PostgreSQL) and redis-server; SOAK_ARGS="--seconds 60" is CI's short run.
soak: install
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Two instances behind nginx on one machine (README "Several hosts"): DATABASE_URL must name a
# PostgreSQL database, REDIS_URL a Redis (a private redis-server when unset); nginx on
# CLUSTER_PORT (8080). Ctrl-C stops all.
CLUSTER_PORT ?= 8080
cluster: install
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || apt-get install -y -q nginx-light
	exec $(BIN)/python -m bench.cluster --port $(CLUSTER_PORT) --seed $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache

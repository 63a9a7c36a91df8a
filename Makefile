# One command per chore; CI calls exactly these.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run node lint test test-cluster bench bench-cluster bench-compose clean

# The virtualenv is rebuilt whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# The main job: a local 3-node cluster on ports 7312-7314, until Ctrl-C.
run: install
	$(BIN)/nixie-cli cluster --nodes 3 $(ARGS)

# One node alone on port 7312, with a data dir apart from the cluster's.
node: install
	$(BIN)/nixie-cli --data-dir nixie-data/single $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The fault tier: sets up Docker if needed, builds the images offline, runs
# the Compose cluster and breaks it in every way the tests describe.
test-cluster: install
	bash cluster/setup-docker.sh
	PYTHON=$(BIN)/python bash cluster/build-image.sh
	$(BIN)/pytest -m docker -s integration/faults $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmark.run $(ARGS)

# Convergence after bursts, then k6 on one node and across a local 3-node cluster.
bench-cluster: install
	$(BIN)/python -m benchmark.convergence
	$(BIN)/python -m benchmark.cluster_k6 $(ARGS)

# k6 against the Docker Compose cluster: its three nodes, then its balancer.
bench-compose: install
	docker compose up -d --wait
	$(BIN)/python -m benchmark.compose_k6 $(ARGS)

# Removes the virtualenv, caches and nixie-data: every local counter.
clean:
	rm -rf $(VENV) nixie-data .pytest_cache .mypy_cache .ruff_cache .hypothesis

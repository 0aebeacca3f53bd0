# keelson.stack: the two commands that matter are `make lab` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= false
export PY_COLORS ?= 0
# CI runs the benchmarks at a small size so they cannot rot; `make bench` runs them at full size.
BENCH_SIZE ?= small
SCENARIOS ?=
# Scenarios run two at a time: most of their time is spent waiting on apt and systemd.
MOLECULE_JOBS ?= 2

.PHONY: help venv sslyze engine images lab lab-up lab-down lab-status site test lint unit sanity molecule integration molecule-and-integration bench bench-small build clean

help:
	@echo "make lab          set up everything and run site.yml against the local lab (the main job)"
	@echo "make test         run every test: lint, unit, molecule scenarios, integration, small benchmarks"
	@echo "make molecule SCENARIOS='base nginx'   run some molecule scenarios"
	@echo "make bench        benchmarks at full size"
	@echo "make lab-status | lab-down             inspect or remove the lab"

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# sslyze pins an older cryptography than community.crypto needs: its own venv.
SSLYZE_VENV := .cache/sslyze-venv
$(SSLYZE_VENV)/.installed: requirements-sslyze.txt
	$(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/pip install -q -r requirements-sslyze.txt
	touch $@

sslyze: $(SSLYZE_VENV)/.installed

engine:
	$(PYTHON) lab/lab.py engine

images: engine
	$(PYTHON) lab/lab.py images

lab-up: venv images
	$(PYTHON) lab/lab.py up

lab-down:
	$(PYTHON) lab/lab.py down

lab-status:
	$(PYTHON) lab/lab.py status

site:
	$(BIN)/ansible-playbook site.yml -i inventories/lab

lab: lab-up site

lint: venv
	$(BIN)/ansible-lint --profile production
	$(PYTHON) tests/check_build.py

unit: venv
	$(BIN)/pytest -q tests/unit

sanity: venv
	$(BIN)/python tests/sanity.py

molecule: lab-up sslyze
	$(BIN)/python tests/run_scenarios.py --jobs $(MOLECULE_JOBS) $(SCENARIOS)

integration: lab
	$(BIN)/pytest -q tests/integration

bench: lab
	$(BIN)/pytest -q -s tests/bench --bench-size=full

# In `make test` this runs right after the integration tests, on the lab they converged.
bench-small: venv
	$(BIN)/pytest -q -s tests/bench --bench-size=small

# Molecule's instances are containers of their own (distinct names and addresses), so
# in `make test` the scenarios run side by side with the lab's converge and the
# integration tests: molecule keeps the CPUs busy with apt and systemd while the
# integration tests mostly wait on traffic and timeouts. Both end before the
# benchmarks start; either failing fails the target (molecule's output follows).
molecule-and-integration: lab-up sslyze
	$(BIN)/python tests/run_scenarios.py --jobs $(MOLECULE_JOBS) > .cache/molecule-run.log 2>&1 & \
	molecule=$$!; status=0; \
	{ $(BIN)/ansible-playbook site.yml -i inventories/lab && $(BIN)/pytest -q tests/integration; } || status=$$?; \
	wait $$molecule || status=$$?; \
	cat .cache/molecule-run.log; \
	exit $$status

test: lint unit sanity molecule-and-integration bench-small
	$(PYTHON) lab/lab.py down

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path .cache/dist

clean: lab-down
	rm -rf .cache .ansible

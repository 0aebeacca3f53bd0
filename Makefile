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

.PHONY: help venv sslyze engine images lab lab-up lab-down lab-status site test lint unit sanity molecule integration checks-lane lab-lane lanes bench bench-small build clean

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

# The integration tests, with the slowest listed. `make integration` runs them all; in
# `make test` the lab lane runs all but the staging example's, which converges hosts of its
# own (only the lab's registry, S3 and ACME server are shared) and so runs in the checks lane.
INTEGRATION := $(BIN)/pytest -q --durations=25 tests/integration
STAGING_TEST := tests/integration/test_staging.py

integration: lab sslyze
	$(INTEGRATION)

bench: lab
	$(BIN)/pytest -q -s tests/bench --bench-size=full

# In `make test` this runs right after the integration tests, on the lab they converged (lab-lane).
bench-small: venv
	$(BIN)/pytest -q -s tests/bench --bench-size=small

# `make test` runs two lanes side by side; either failing fails it.
#  - checks lane: lint, unit and sanity (they need no lab), then, once the lab lane has
#    brought the lab up and converged it, every molecule scenario, then the staging example
#    on hosts of its own. Molecule's instances and the staging hosts are containers of their
#    own (distinct names and addresses) and keep the CPUs busy with apt and systemd;
#  - lab lane: the lab up, its converge, the integration tests (they mostly wait on
#    traffic and timeouts), then the benchmarks at a small size on the lab they converged.
# The lab lane is the longer: the checks lane runs at a lower priority (nice 10) beside it.
# The checks lane's output is printed when both have ended.
LAB_UP_MARK := .cache/lanes/lab-up
LAB_CONVERGED_MARK := .cache/lanes/lab-converged
LAB_FAILED_MARK := .cache/lanes/lab-failed

checks-lane: lint unit sanity
	@until [ -e $(LAB_UP_MARK) ]; do [ ! -e $(LAB_FAILED_MARK) ] || { echo "checks lane: the lab did not come up"; exit 1; }; sleep 5; done
	$(BIN)/python tests/run_scenarios.py --jobs $(MOLECULE_JOBS)
	@until [ -e $(LAB_CONVERGED_MARK) ]; do [ ! -e $(LAB_FAILED_MARK) ] || { echo "checks lane: the lab did not converge"; exit 1; }; sleep 5; done
	$(BIN)/pytest -q -s --durations=5 $(STAGING_TEST)

# The tests start from a lab of their own: one left up by an earlier run (a failed
# `make test`, `make lab`) holds that run's data, such as its migrations and releases.
lab-lane: venv images
	$(PYTHON) lab/lab.py down
	$(PYTHON) lab/lab.py up
	@touch $(LAB_UP_MARK)
	$(MAKE) --no-print-directory site
	@touch $(LAB_CONVERGED_MARK)
	$(INTEGRATION) --ignore=$(STAGING_TEST)
	$(MAKE) --no-print-directory bench-small

lanes: venv sslyze
	@rm -rf .cache/lanes; mkdir -p .cache/lanes; status=0; \
	nice -n 10 $(MAKE) --no-print-directory checks-lane > .cache/checks-lane.log 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory lab-lane || { status=$$?; touch $(LAB_FAILED_MARK); }; \
	wait $$checks || status=$$?; \
	echo "=== checks lane (lint, unit, sanity, molecule) ==="; cat .cache/checks-lane.log; \
	exit $$status

# (lab down on a line of its own: `make -n` runs every line that calls $(MAKE))
test: lanes
	$(PYTHON) lab/lab.py down

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path .cache/dist

clean: lab-down
	rm -rf .cache .ansible

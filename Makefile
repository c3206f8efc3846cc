# losslab — `make help` lists the targets.
PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default
EXP ?=
JOBS ?= 2
TEST_JOBS ?= 2
RESULTS ?= results
LAUNCHER ?=
ALLOW_MISSING ?=
KEEP_STALE ?=
REFERENCE ?= tables
BUDGET ?=
FACTOR ?= 2
SCALE ?= full
DATA ?= /tmp/rehearse-data
ONLY ?=
NICE ?= 19

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

install: $(VENV)/.installed ## create .venv and install pinned requirements (idempotent)

test: install ## fast test suite (not marked slow), one pytest process per core (TEST_JOBS, default 2; files kept whole per process)
	$(PY) -m pytest -m "not slow" -q -n $(TEST_JOBS) --dist loadfile

test-full: install ## every test, including slow ones
	$(PY) -m pytest -q

reproduce-table: install ## run unfinished configs (JOBS=n worker processes), render tables+figures: PROFILE=smoke|default|paper EXP=name LAUNCHER=slurm BUDGET=x (training length ×x) KEEP_STALE=1 (runs of changed code kept, marked, not re-run) ALLOW_MISSING=1 (paper: run the configs whose data is present, the rest 'n/a — data missing'); RUNS_PER_GPU=r (JOBS workers pinned r per GPU; with LAUNCHER=slurm: r runs per GPU in packed SLURM jobs, PACK_JOBS=n of them, docs/scaling.md); PLAN=1 [IMG_PER_S=x (ResNet-50 at 224 px; each model priced at its own rate) RUNS_PER_GPU=r] only prints the plan
	$(PY) -m experiments.reproduce --profile $(PROFILE) --jobs $(JOBS) --results-dir $(RESULTS) $(if $(EXP),--exp $(EXP)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(PACK_JOBS),--pack-jobs $(PACK_JOBS)) $(if $(PLAN),--plan) $(if $(IMG_PER_S),--img-per-s $(IMG_PER_S)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(KEEP_STALE),--keep-stale) $(if $(ALLOW_MISSING),--allow-missing)

tables: install ## re-render tables (and figures) from existing runs only
	$(PY) -m experiments.reproduce --profile $(PROFILE) --render-only --results-dir $(RESULTS) $(if $(EXP),--exp $(EXP)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(KEEP_STALE),--keep-stale) $(if $(ALLOW_MISSING),--allow-missing)

status: install ## per experiment finished/stale/missing/failed/refused runs and the changed files behind stale ones, training nothing (PROFILE, EXP, RESULTS as above)
	$(PY) -m experiments.status --profile $(PROFILE) --results-dir $(RESULTS) $(if $(EXP),--exp $(EXP)) $(if $(BUDGET),--budget $(BUDGET))

plots: tables ## alias of `make tables`: tables and figures render together

converge-check: install ## train EXP at FACTOR× (default 2) the budget into RESULTS/converge/runs-<F>x and compare every table with the 1× one: results/converge/<table>.md; exit 1 if a paper table's conclusion changes
	$(PY) -m experiments.converge --profile $(PROFILE) --jobs $(JOBS) --results-dir $(RESULTS) --factor $(FACTOR) $(if $(BUDGET),--budget $(BUDGET)) $(if $(EXP),--exp $(EXP))

verify: install ## did it reproduce? a verdict per table cell of RESULTS against REFERENCE=tables (committed, default)|paper|DIR (PROFILE, EXP as above) -> RESULTS/verify/<table>.md|csv; exit 1 if a cell differs
	$(PY) -m experiments.verify --profile $(PROFILE) --results $(RESULTS) --reference $(REFERENCE) $(if $(EXP),--exp $(EXP)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(KEEP_STALE),--keep-stale)

bench: install ## measured speed ratios (losses, trainer, data path, fixed cost per run, no-op re-run) -> results/bench/bench.json; BENCH_PROFILE=1 adds the default profile's wall time and memory
	OMP_NUM_THREADS=1 $(PY) -m experiments.drivers.bench

rehearse: install ## EXP=<paper experiment> DATA=<folder>: write its datasets (where absent) in their real formats at real counts with tiny images, run one epoch per (dataset, loss) with a small model, print listing/first-batch/loader/eval/memory/size figures; SCALE=small, ONLY=loss=role, STEPS=n (n batches instead of the epoch: no run recorded), RESULTS=/tmp/...
	nice -n $(NICE) $(PY) -m experiments.drivers.rehearse --exp $(EXP) --data $(DATA) --scale $(SCALE) --results $(if $(filter results,$(RESULTS)),/tmp/rehearse/results,$(RESULTS)) $(if $(ONLY),--only $(ONLY)) $(if $(STEPS),--steps $(STEPS))

gpu-check: install ## on a GPU machine (≤ 5 min): the cuda tests, a timed rehearsal slice, a small table GPU vs CPU; without a GPU one line, exit 0
	$(PY) -m experiments.drivers.gpu_check --data $(if $(DATA),$(DATA),/tmp/rehearse-data)

train: install ## one run: make train ARGS="experiment=simloss_age seed=1"
	$(PY) -m experiments.train $(ARGS)

clean-results: ## delete runs, checkpoints and logs under results/ (keeps tables, figures, paper_reference)
	rm -rf $(RESULTS)/runs $(RESULTS)/work $(RESULTS)/logs

.PHONY: help install test test-full reproduce-table tables status plots converge-check verify bench train clean-results rehearse gpu-check

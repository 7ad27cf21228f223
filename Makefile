# The two commands: `make lab` (set up and open the course) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888

.PHONY: setup lab test lint unit nbval build execute verify data checkpoints bench clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" > /dev/null
	@touch $@

# --allow-root only when run as root (containers, some lab machines): Jupyter refuses otherwise.
lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(PORT) --ServerApp.root_dir=notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

build: setup
	$(BIN)/course-build

# After editing a lesson: re-run the solution notebooks in place (they are stored executed),
# then regenerate the student versions.
execute: setup
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace solutions/*.ipynb
	$(BIN)/course-build

# Instructors' check: every solution gets full marks from the grader, every stub 0 (~3 min).
verify: setup
	$(BIN)/course-build --verify

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest tests

# Solutions are stored executed: nbval re-runs them and compares outputs.
# Student notebooks must run top to bottom before anything is solved (lax: no comparison).
nbval: setup
	$(BIN)/python -m pytest -p no:cacheprovider --nbval solutions -o testpaths=
	$(BIN)/python -m pytest -p no:cacheprovider --nbval-lax notebooks -o testpaths=

# CI budgets (COURSE_QUICK=1): the detectors and segmenters the notebooks load are trained on
# fewer images for less time (course_lib/recipes/), once, before the tests that use them.
test: setup lint
	$(BIN)/course-build --check
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.detection
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.segmentation
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.instance
	COURSE_QUICK=1 $(MAKE) --no-print-directory unit nbval

# Optional: pre-build the synthetic data caches (lessons build what they need on first use).
data: setup
	$(BIN)/python data_scripts/make_synthetic.py

# Optional: train the detectors of lessons 02-04 (full budgets, ~35 min on 2 cores), the
# segmenters of lesson 07 (~9 min) and lesson 08's Mask R-CNN (10 min) once; otherwise each
# notebook trains what it needs the first time it runs and caches it.
checkpoints: setup
	$(BIN)/python -m course_lib.recipes.detection
	$(BIN)/python -m course_lib.recipes.segmentation
	$(BIN)/python -m course_lib.recipes.instance

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

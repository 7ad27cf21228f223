# The two commands: `make lab` (set up and open the course) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888
SLIDES_PORT ?= 8000

.PHONY: setup lab test lint unit nbval build execute verify data checkpoints bench clean \
	slides present browser

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
	$(BIN)/python -m pytest tests --durations=25

# Solutions are stored executed: nbval re-runs them and compares outputs.
# Student notebooks must run top to bottom before anything is solved (lax: no comparison).
nbval: setup
	$(BIN)/python -m pytest -p no:cacheprovider --nbval solutions -o testpaths=
	$(BIN)/python -m pytest -p no:cacheprovider --nbval-lax notebooks -o testpaths=

# CI budgets (COURSE_QUICK=1): the detectors and segmenters the notebooks load are trained on
# fewer images for less time (course_lib/recipes/), once, before the tests that use them.
test: setup lint browser
	$(BIN)/course-build --check
	$(BIN)/python data_scripts/fetch_slide_vendor.py --quiet
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.detection
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.segmentation
	COURSE_QUICK=1 $(BIN)/python -m course_lib.recipes.instance
	COURSE_QUICK=1 $(MAKE) --no-print-directory unit nbval

# Instructors' slide decks: slides/NN_topic.slides.html from the executed solutions (~10 s),
# offline. Their JavaScript and CSS (reveal.js, MathJax, ...) come from the npm registry once
# into build/vendor/, checked against the SHA-256s in course_lib/slides.py.
slides: setup
	$(BIN)/python data_scripts/fetch_slide_vendor.py --quiet
	$(BIN)/course-slides

# Present one lesson: `make present LESSON=05` builds its deck and serves it on
# http://127.0.0.1:$(SLIDES_PORT)/ (nbconvert's --post serve); Control-C stops it.
present: setup
	@test -n "$(LESSON)" || { echo "usage: make present LESSON=05"; exit 2; }
	$(BIN)/python data_scripts/fetch_slide_vendor.py --quiet
	$(BIN)/course-slides --present $(LESSON) --port $(SLIDES_PORT)

# The real-browser tests drive Debian's Chromium with playwright (whose own browser download
# is not reachable everywhere). As root, install it when missing; otherwise say how (the
# browser tests skip without it).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null; \
	else \
		echo "note: no Chromium in /usr/bin: the browser tests will skip. To run them:"; \
		echo "  sudo apt-get install chromium chromium-driver   (or COURSE_CHROMIUM=/path/to/chrome)"; \
	fi

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

# clipkit: the two commands are `make report` and `make test` (see README.md).
# Everything installs into .venv from pyproject.toml; nothing is needed beyond python3 >= 3.10.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.clipkit-installed
CLIPKIT_HOME ?= $(HOME)/.cache/clipkit
export CLIPKIT_HOME
# The embedded default model: clipkit-tiny trained on synthetic scenes, cached here.
DEFAULT_CKPT = $(CLIPKIT_HOME)/models/clipkit-tiny-synthetic
# Every probe and analysis notebook runs for each of MODELS; BASELINES get the probe notebooks only
# (the untrained model is the chance-level control beside them in the index).
MODELS ?= clipkit-tiny:synthetic
BASELINES ?= clipkit-tiny:random
TRAIN_ARGS ?=
# `make report` reruns only the notebooks whose inputs changed (clipkit report's execution cache);
# FORCE=1 executes every notebook. JOBS: notebooks run at once (default: min(2, cores)).
FORCE ?=
JOBS ?=
REPORT_FLAGS = $(if $(strip $(FORCE)),--force) $(if $(strip $(JOBS)),--jobs $(JOBS))

.PHONY: setup model report experiments test bench clean help
help:
	@echo "make report      - set up .venv, train the default model if not cached, run the probe and analysis notebooks into reports/"
	@echo "                   (only those whose inputs changed; FORCE=1 runs all, JOBS=N notebooks at once)"
	@echo "make test        - set up .venv, run the test suite"
	@echo "make model       - set up .venv, train the default model if not cached ($(DEFAULT_CKPT))"
	@echo "make experiments - set up .venv, run the training experiments into reports/experiments/ (15-25 min each on 2 CPU cores)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes these two builds from this machine's disk
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# CLIP_benchmark, for the parity tests and bench/: its metric code needs only torch, tqdm and
	# scikit-learn; its declared dependencies (transformers, pycocoevalcap, ...) are not needed
	$(BIN)/python -m pip install --quiet --no-deps clip_benchmark==1.6.2
	@touch $(STAMP)

setup: $(STAMP)

# Train only when no finished model of today's recipe is cached; an interrupted run resumes from its
# last checkpoint. A cached model of an older recipe (another architecture or preset) is kept, renamed
# with the date it was moved aside, and the current one is trained.
model: $(STAMP)
	@if [ -f "$(DEFAULT_CKPT)/model.safetensors" ] && ! $(BIN)/python -m clipkit.train.recipe "$(DEFAULT_CKPT)"; then \
	  old="$(DEFAULT_CKPT).before-$$(date +%Y%m%d-%H%M%S)"; mv "$(DEFAULT_CKPT)" "$$old"; \
	  echo "[make] the cached default model was trained to an older recipe: kept as $$old; training today's"; \
	fi; \
	if [ -f "$(DEFAULT_CKPT)/model.safetensors" ]; then \
	  echo "[make] default model cached at $(DEFAULT_CKPT)"; \
	else \
	  $(BIN)/clipkit train --preset tiny --out "$(DEFAULT_CKPT)" --resume auto $(TRAIN_ARGS); \
	fi

# Both report commands run even if the first has a failing notebook; make fails at the end if either did.
report: model
	@rc=0; \
	$(BIN)/clipkit report $(REPORT_FLAGS) $(foreach m,$(MODELS),--model $(m)) || rc=1; \
	$(if $(strip $(BASELINES)),$(BIN)/clipkit report $(REPORT_FLAGS) $(foreach m,$(BASELINES),--model $(m)) \
	  $(foreach n,$(wildcard notebooks/probe_*.ipynb),--notebook $(n)) || rc=1;) \
	exit $$rc

experiments: $(STAMP)
	$(BIN)/clipkit report $(REPORT_FLAGS) --experiments

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@echo "see bench/README.md"

clean:
	rm -rf reports/*/ reports/index.html reports/summary.json

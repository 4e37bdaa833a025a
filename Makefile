# The NovoGrad reproduction suite. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV      ?= uv
PYTHON  := $(UV) run --frozen python
# GPUs per node (default: every GPU visible, else 1 CPU process), nodes, and extra Hydra overrides.
NPROC   ?= $(shell nvidia-smi -L 2>/dev/null | grep -c GPU | sed 's/^0$$/1/' || echo 1)
NNODES  ?= 1
ARGS    ?=
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1

# One target per paper row, named from its experiment file: configs/experiment/table1/novograd_100ep.yaml
# becomes `make table1-novograd-100ep`.
EXPERIMENTS := $(sort $(patsubst configs/experiment/%.yaml,%,$(wildcard configs/experiment/table*/*.yaml)))
target_name = $(subst _,-,$(subst /,-,$(1)))
EXPERIMENT_TARGETS := $(foreach e,$(EXPERIMENTS),$(call target_name,$(e)))

.PHONY: help install demo dln test test-all tables tune prepare-imagenet prepare-librispeech prepare-wikitext103 prepare-wmt14 bench-optimizer memory bench-speech-data bench-data bench-engine $(EXPERIMENT_TARGETS)

help: ## List every target
	@echo "Usage: make <target> [NPROC=N] [NNODES=N] [ARGS=\"key=value ...\"]"
	@echo
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-28s %s\n", $$1, $$2}'
	@echo
	@echo "Paper rows (torchrun via novograd.engine.launcher --nproc-per-node=NPROC --nnodes=NNODES -m novograd.train experiment=<row>):"
	@$(foreach e,$(EXPERIMENTS),printf "  %-28s experiment=%s\n" "$(call target_name,$(e))" "$(e)";)

# --inexact: the locked packages at their locked versions, without removing what the user added to .venv (the slurm
# extra from `uv sync --frozen --extra slurm`, apex): an exact sync would uninstall them on every `make test`.
install: ## Install uv if missing, then the locked environment into .venv (keeping extras you installed)
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --inexact

demo: install ## Install, then reproduce the deep linear network study (Section 4) on the CPU
	$(MAKE) --no-print-directory dln

dln: ## Deep linear network study: figures, robustness maps and summary in results/dln/
	$(PYTHON) -m novograd.dln $(ARGS)

test: install ## Install, then run the test suite (CPU, offline; slow and GPU tests deselected)
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen pytest -m "not slow and not gpu" $(ARGS)

test-all: install ## Every test, slow and GPU ones included
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen pytest $(ARGS)

tables: ## The paper's tables with your runs (results/runs/) beside them, in results/tables/
	$(PYTHON) -m novograd.report.tables $(ARGS)

# @: with ARGS=--dry-run the output is the trials' commands alone, one per line (for a SLURM array).
tune: ## Equal tuning budgets: TRIALS (5) quasi-random points of each row's search space, SEED (0), one run per GPU
	@test -n "$(ROWS)" || { echo "usage: make tune ROWS=\"table1-sgd-100ep table1-adamw-100ep ...\" [TRIALS=5] [SEED=0] [ARGS=\"--dry-run --gpus-per-trial 8 key=value ...\"]"; exit 2; }
	@$(PYTHON) -m novograd.tuning $(ROWS) --trials $(or $(TRIALS),5) --seed $(or $(SEED),0) $(ARGS)

prepare-imagenet: ## ImageNet train/ and val/ folders from the ILSVRC2012 archives in ARCHIVES=DIR, into IMAGENET_ROOT
	@test -n "$(ARCHIVES)" -a -n "$(IMAGENET_ROOT)" || { echo "usage: make prepare-imagenet ARCHIVES=/path/to/archives IMAGENET_ROOT=/data/imagenet [ARGS=\"--jobs 16 ...\"]"; exit 2; }
	scripts/prepare_imagenet.sh $(ARGS) $(ARCHIVES) $(IMAGENET_ROOT)

prepare-librispeech: ## LibriSpeech FLACs + JSON-lines manifests from the official archives in ARCHIVES=DIR, into LIBRISPEECH_ROOT
	@test -n "$(ARCHIVES)" -a -n "$(LIBRISPEECH_ROOT)" || { echo "usage: make prepare-librispeech ARCHIVES=/path/to/archives LIBRISPEECH_ROOT=/data/librispeech [ARGS=\"<script options>\"]"; exit 2; }
	$(PYTHON) scripts/prepare_librispeech.py --archives $(ARCHIVES) --root $(LIBRISPEECH_ROOT) $(ARGS)

prepare-wikitext103: ## WikiText-103 vocabulary and token arrays into WT103_ROOT, from SOURCE=hub (default, online) or the official zip/folder
	@test -n "$(WT103_ROOT)" || { echo "usage: make prepare-wikitext103 WT103_ROOT=/data/wikitext103 [SOURCE=hub|/path/to/wikitext-103-v1.zip] [ARGS=\"<script options>\"]"; exit 2; }
	HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 $(PYTHON) scripts/prepare_wikitext103.py --root $(WT103_ROOT) --source $(or $(SOURCE),hub) $(ARGS)

prepare-wmt14: ## WMT14 en-de joint BPE (8192) and token arrays into WMT14_ROOT, from SOURCE=hub (default, online) or local text files
	@test -n "$(WMT14_ROOT)" || { echo "usage: make prepare-wmt14 WMT14_ROOT=/data/wmt14 [SOURCE=hub|/path/to/text] [ARGS=\"<script options>\"]"; exit 2; }
	HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 $(PYTHON) scripts/prepare_wmt14.py --root $(WMT14_ROOT) --source $(or $(SOURCE),hub) $(ARGS)

bench-optimizer: ## ms per optimizer step: NovoGrad paths vs torch SGD/AdamW on ResNet-50 and Transformer-big shapes
	$(PYTHON) scripts/bench_optimizer.py $(ARGS)

memory: ## Optimizer state (SGD, Adam, AdamW, NovoGrad) and whole-step memory of the four paper models: results/memory.*
	$(PYTHON) scripts/memory.py $(ARGS)

bench-speech-data: ## Utterances/s and audio-seconds/s of the LibriSpeech data path alone (FLAC, speed perturbation, log-mel)
	OMP_NUM_THREADS=1 $(PYTHON) scripts/bench_speech_data.py $(ARGS)

bench-data: ## Per-core items/s of every workload's data path, cores per GPU at published throughputs; ImageNet uint8 vs before: results/bench/data.*
	OMP_NUM_THREADS=1 $(PYTHON) scripts/bench_data.py $(ARGS)

.PHONY: gpu-check
gpu-check: ## On one GPU (~8 min): GPU tests, full-size training steps, optimizer ratios, attention backends, GPU-hours per row: results/gpu/
	$(PYTHON) scripts/gpu_check.py $(ARGS)

bench-engine: ## Steps/s through the engine vs a bare PyTorch loop (ResNet smoke, CPU)
	OMP_NUM_THREADS=1 $(PYTHON) scripts/bench_engine.py $(ARGS)

# torchrun through novograd/engine/launcher.py: a preempted run (SIGTERM or SIGUSR1 to the launcher) checkpoints
# and exits 0, where torchrun alone exits 1 (SIGTERM) or dies leaving its workers behind (SIGUSR1); docs/preemption.md.
# Before any worker starts it checks the config of every job (one message and exit 2 on a config error), and it moves
# Hydra's flags before the overrides, so that ARGS="-m optimizer.lr=0.01,0.02" sweeps.
define EXPERIMENT_RULE
$(call target_name,$(1)): ## experiment=$(1)
	$(UV) run --frozen python -m novograd.engine.launcher --nproc-per-node=$$(NPROC) --nnodes=$$(NNODES) $$(TORCHRUN_ARGS) -m novograd.train experiment=$(1) $$(ARGS)
endef
$(foreach e,$(EXPERIMENTS),$(eval $(call EXPERIMENT_RULE,$(e))))

# Any other target (a mistyped row such as `make table1-novograd-50ep`): the rows of its table and `make help`,
# instead of make's "No rule to make target". `.DEFAULT` serves only targets without a rule, so the targets above keep
# their recipes; a file that exists (the Makefile, when make checks whether to remake it) is up to date and never
# runs it.
.DEFAULT:
	@echo "make: no target '$@'. $(if $(filter $(firstword $(subst -, ,$@))-%,$(EXPERIMENT_TARGETS)),Rows of $(firstword $(subst -, ,$@)): $(filter $(firstword $(subst -, ,$@))-%,$(EXPERIMENT_TARGETS)). )\`make help\` lists every target and paper row." >&2; exit 2

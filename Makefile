# imputer_asr: top-level entry points. `make demo` installs everything and runs the offline recipe;
# `make test` installs if needed and runs the test suite.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_TOOLS := espeak-ng flite text2wave sox
# festival's English voices, then its voices of other languages that read English with an accent
# (the optional engine 'accented' of imputer_asr/data/synth/voices.py)
FESTIVAL_VOICES := kal_diphone ked_diphone cmu_us_slt_arctic_hts lp_diphone pc_diphone suo_fi_lj_diphone \
  hy_fi_mv_diphone czech_dita czech_krb czech_machac czech_ph
APT_PACKAGES := espeak-ng flite sox fortunes festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
  festvox-italp16k festvox-itapc16k festvox-suopuhe-lj festvox-suopuhe-mv festvox-czech-dita festvox-czech-krb \
  festvox-czech-machac festvox-czech-ph

.PHONY: install system-deps demo test test-all lint format bench help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed system-deps ## create .venv, install the package and the system tools

# The venv takes about 5.6 GB (torch). On a full disk pip reports a download cut short, which looks
# like a network fault; say what it is before starting.
VENV_KB := 6000000

$(VENV)/.installed: pyproject.toml
	@free=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
	if ! test -x $(PY) && [ "$$free" -lt $(VENV_KB) ]; then \
	  echo "make install: the .venv needs about 6 GB (torch) and $(CURDIR) has $$((free / 1024)) MB free; free some space first" >&2; \
	  exit 1; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml; installing it in the same command keeps pip from fetching another.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

system-deps: ## espeak-ng, flite, festival and its English and accented voices, sox and fortunes for the synthetic corpus
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	for v in $(FESTIVAL_VOICES); do compgen -G "/usr/share/festival/voices/*/$$v" >/dev/null || missing="$$missing $$v"; done; \
	test -d /usr/share/games/fortunes || missing="$$missing fortunes"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Install them, e.g.: sudo apt-get install -y $(APT_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

demo: install ## install, then run the whole offline synth recipe (corpus -> CTC -> Imputer -> scores)
	@start=$$(date +%s); \
	$(MAKE) -C recipes/synth; \
	echo "make demo: $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"

test: install ## run the test suite (slow end-to-end tests excluded)
	$(PY) -m pytest -q -m "not slow" --doctest-modules imputer_asr tests

test-all: install ## run every test, slow ones included
	$(PY) -m pytest -q --doctest-modules imputer_asr tests

bench: $(VENV)/.installed ## each speed beside its reference, measured in one run: training vs matmul GFLOPS, imputer_loss vs ctc_loss, K=8 vs CTC greedy, onnxruntime vs PyTorch (the last two after make demo)
	$(PY) benchmarks/train_speed.py --threads 2
	OMP_NUM_THREADS=2 $(PY) benchmarks/loss_speed.py
	@models=$$(ls recipes/synth/exp/imputer*/model.pt 2>/dev/null); \
	if [ -n "$$models" ]; then $(PY) benchmarks/decode_speed.py --cuts data/synth/demo/fbank/cuts_test_fbank.jsonl.gz \
	  --threads 2 --steps 8 $$models; else echo "recipes/synth/exp/imputer*/model.pt: not trained yet; run make demo"; fi
	@if [ -f recipes/synth/exp/ctc/model.pt ]; then \
	  $(PY) benchmarks/onnx_speed.py --model recipes/synth/exp/ctc/model.pt --decoders ctc --threads 2 data/synth/demo/corpus/test; \
	else echo "recipes/synth/exp/ctc/model.pt: not trained yet; run make demo"; fi

lint: $(VENV)/.installed ## ruff lint and format check
	$(VENV)/bin/ruff check imputer_asr tests benchmarks
	$(VENV)/bin/ruff format --check imputer_asr tests benchmarks

format: $(VENV)/.installed ## apply ruff formatting
	$(VENV)/bin/ruff check --fix imputer_asr tests benchmarks
	$(VENV)/bin/ruff format imputer_asr tests benchmarks

# The stages every recipe shares, from the BPE model to the comparison table; each recipe Makefile sets
# what differs (where the corpus comes from, its parts, sizes, configs, how training is launched) and
# then includes this file. A variable left empty passes no flag, so the command's own default applies.
#
# Set by the recipe before the include (paths are fixed when this file is read):
#   ROOT                 the repository
#   MANIFESTS            lhotse manifests; MANIFESTS_DONE, the file the manifests stage ends with
#   LANG_DIR FBANK EXP   BPE model and LM; features; experiments
#   TRAIN DEV_PART TEST_PART EVAL_PARTS
#                        the training part, the part that tunes (dev), the part compare reports (test),
#                        every part decoded by CTC
#   VOCAB JOBS           BPE pieces; feature workers
#   FBANK_TRAIN_ARGS FBANK_EVAL_ARGS
#                        fbank options of the training part and of the others
#   CTC_CONF IMPUTER_CONF SETTING STEPS
#                        configs; the setting's name in plot titles; the Imputer's decoding steps K
# Optional: TRAIN_LAUNCH (default: the CLI itself), DEVICE, THRESHOLD, ALIGN_HOURS, SEED, IMP_PARTS,
#   LM_PARTS, WITH_LM, WITH_INJECT, LM_WEIGHTS, WORD_SCORES, LM_BEAM_TOKENS.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := all

PY ?= $(ROOT)/.venv/bin/python
ASR ?= $(ROOT)/.venv/bin/imputer-asr
TRAIN_LAUNCH ?= $(ASR)

BPE := $(LANG_DIR)/bpe$(VOCAB).model
cuts = $(FBANK)/cuts_$(1)_fbank.jsonl.gz
TRAIN_CUTS := $(call cuts,$(TRAIN))
DEV_CUTS := $(call cuts,$(DEV_PART))
ALIGNED := $(FBANK)/cuts_$(TRAIN)_aligned.jsonl.gz
CTC := $(EXP)/ctc
IMP := $(EXP)/imputer
MATCHED := $(EXP)/ctc-matched
INJECT_LAYER ?= 3
IMP_INJ := $(EXP)/imputer-inject$(INJECT_LAYER)

IMP_PARTS ?= $(EVAL_PARTS)
LM_PARTS ?= $(EVAL_PARTS)
# THRESHOLD empty: no adaptive decoding
THRESHOLD ?=
WITH_LM ?= no
WITH_INJECT ?= no
# Training overrides: EPOCHS (CTC), IMPUTER_EPOCHS (Imputer and matched CTC), OVERRIDES='section.field=value ...'
EPOCHS ?=
IMPUTER_EPOCHS ?=
OVERRIDES ?=
SETS := $(if $(EPOCHS),--set train.epochs=$(EPOCHS)) $(foreach o,$(OVERRIDES),--set $(o))
IMP_SETS := $(if $(IMPUTER_EPOCHS),--set train.epochs=$(IMPUTER_EPOCHS)) $(foreach o,$(OVERRIDES),--set $(o))
DEVICE_ARGS = $(if $(DEVICE),--device $(DEVICE))
# $(call given,VAR,--flag): `--flag $(VAR)` once VAR is set, even to nothing (SPEEDS= asks for no speed
# copies); unset, the flag is left out and the command's default applies
given = $(if $(filter undefined,$(origin $(1))),,$(2) $($(1)))

# `make help`: the "target: ... ## what it does" lines of the recipe, in reading order, this file's where
# the recipe includes it
LIST_STAGES = awk 'function read(file,   line, words) { \
	    while ((getline line < file) > 0) { \
	      if (line ~ /^include /) { split(line, words, " "); read(words[2]) } \
	      else if (line ~ /^[a-z-]+:.*\#\# /) { n++; name[n] = substr(line, 1, index(line, ":") - 1); \
	        doc[n] = substr(line, index(line, "\#\# ") + 3); if (length(name[n]) > width) width = length(name[n]) } } \
	    close(file) } \
	  BEGIN { read("$(firstword $(MAKEFILE_LIST))"); for (i = 1; i <= n; i++) printf "  %-" width "s %s\n", name[i], doc[i] }'

# $(call model_rules,DIR,TITLE): DIR's packaged model, training curves, and the score of hypotheses
# that no decoding rule of DIR made (a decoding scores its own: it writes wer-<name>.txt after hyps-<name>.jsonl)
define model_rules
$(1)/model.pt: $(1)/train.done
	$(ASR) package --exp-dir $(1) --bpe $(BPE) --out $$@
$(1)/training.png: $(1)/train.done
	$(ASR) plot --log $(1)/train_log.jsonl --out $$@ --title "$(2) ($(SETTING))"
$(1)/wer-%.txt: $(1)/hyps-%.jsonl
	$(ASR) score --hyps $$< --out-dir $(1) --name $$*
endef

# $(call greedy_rule,DIR): greedy CTC decoding of any part by DIR's model, hyps-<part>-greedy.jsonl and
# its score. (Where two pattern rules match, as this one and model_rules' score do, make takes the
# shorter stem: this one.)
define greedy_rule
$(1)/hyps-%-greedy.jsonl $(1)/wer-%-greedy.txt: $(1)/model.pt
	$(ASR) decode --model $$< --cuts $$(call cuts,$$*) --out-dir $(1) --name $$*-greedy $(DEVICE_ARGS)
endef

.PHONY: help bpe fbank train-ctc package-ctc decode-ctc score-ctc plot-ctc decode score clean

bpe: $(BPE) ## sentencepiece BPE (VOCAB pieces) on the training transcripts
$(BPE): $(MANIFESTS_DONE)
	$(ASR) bpe --manifest-dir $(MANIFESTS) --part $(TRAIN) --vocab-size $(VOCAB) --out $@

fbank: $(FBANK)/.done ## 80-dim fbank of every part, the training part augmented (see the variables)
$(FBANK)/.done: $(MANIFESTS_DONE) | $(BPE)
	$(ASR) fbank --manifest-dir $(MANIFESTS) --out-dir $(FBANK) --bpe $(BPE) --part $(TRAIN) \
	  $(FBANK_TRAIN_ARGS) --jobs $(JOBS)
	$(ASR) fbank --manifest-dir $(MANIFESTS) --out-dir $(FBANK) --bpe $(BPE) --part $(EVAL_PARTS) \
	  $(FBANK_EVAL_ARGS) --jobs $(JOBS)
	touch $@

# ---- CTC baseline ----
TRAIN_CTC = $(TRAIN_LAUNCH) train --config $(CTC_CONF) $(SETS) --exp-dir $(CTC) --resume --bpe $(BPE) \
  --train-cuts $(TRAIN_CUTS) --dev-cuts $(DEV_CUTS)

train-ctc: $(FBANK)/.done ## train the conformer-CTC baseline (resumes; EPOCHS=n trains on to n)
	$(TRAIN_CTC)
$(CTC)/train.done: $(FBANK)/.done
	$(TRAIN_CTC)

$(eval $(call model_rules,$(CTC),CTC))
$(eval $(call greedy_rule,$(CTC)))
package-ctc: $(CTC)/model.pt ## average the last checkpoints into EXP/ctc/model.pt
decode-ctc: $(foreach p,$(EVAL_PARTS),$(CTC)/hyps-$(p)-greedy.jsonl) ## greedy CTC decoding of EVAL_PARTS
score-ctc: $(foreach p,$(EVAL_PARTS),$(CTC)/wer-$(p)-greedy.txt) ## WER/CER and per-utterance errors of decode-ctc
	@cat $^
plot-ctc: $(CTC)/training.png ## PNG of the training curves and dev WER against training time

# ---- Word n-gram LM: a lexicon-constrained beam search over the CTC model's output ----
# LM_ORDER and LM_PRIOR_SIZE name the LM's files, so they are stated here rather than left to `lm`.
LM_ORDER ?= 3
# Words the training transcripts lack come from a unigram prior: wordfreq's English frequencies
# (a word-count file also works), its LM_PRIOR_SIZE most frequent words. LM_PRIOR= turns it off.
LM_PRIOR ?= wordfreq
LM_PRIOR_SIZE ?= 100000
LM_TAG := $(if $(LM_PRIOR),-$(basename $(notdir $(LM_PRIOR)))$(LM_PRIOR_SIZE))
LM := $(LANG_DIR)/lm$(LM_ORDER)$(LM_TAG).arpa
LEXICON := $(LANG_DIR)/lexicon_bpe$(VOCAB)$(LM_TAG).txt
# The grid of tune-lm and the pieces tried per frame; empty: tune-lm's and the search's defaults.
LM_WEIGHTS ?=
WORD_SCORES ?=
LM_BEAM_TOKENS ?=
LM_GRID = $(if $(LM_WEIGHTS),--lm-weight $(LM_WEIGHTS)) $(if $(WORD_SCORES),--word-score $(WORD_SCORES))
LM_SEARCH = $(if $(LM_BEAM_TOKENS),--beam-size-token $(LM_BEAM_TOKENS))

.PHONY: lm tune-lm decode-ctc-lm score-ctc-lm

lm: $(LM) ## word LM_ORDER-gram LM (ARPA, Kneser-Ney) on the training transcripts, and its BPE lexicon
$(LM): $(MANIFESTS_DONE) $(BPE)
	$(ASR) lm --manifest-dir $(MANIFESTS) --part $(TRAIN) --eval-part $(DEV_PART) --order $(LM_ORDER) --bpe $(BPE) \
	  $(if $(LM_PRIOR),--prior $(LM_PRIOR) --prior-size $(LM_PRIOR_SIZE)) --arpa $@ --lexicon $(LEXICON)

tune-lm: $(CTC)/lm-weights.json ## choose the LM weight and word score by DEV_PART WER (grid LM_WEIGHTS x WORD_SCORES)
$(CTC)/lm-weights.json: $(CTC)/model.pt $(LM)
	$(ASR) tune-lm --model $< --cuts $(DEV_CUTS) --lexicon $(LEXICON) --arpa $(LM) $(LM_GRID) $(LM_SEARCH) --out $@

decode-ctc-lm: $(foreach p,$(LM_PARTS),$(CTC)/hyps-$(p)-lm.jsonl) ## CTC beam search with the lexicon and the LM on LM_PARTS, weights from tune-lm
$(CTC)/hyps-%-lm.jsonl $(CTC)/wer-%-lm.txt: $(CTC)/model.pt $(CTC)/lm-weights.json
	$(ASR) decode --model $< --cuts $(call cuts,$*) --out-dir $(CTC) --name $*-lm \
	  --lexicon $(LEXICON) --arpa $(LM) --lm-weights $(CTC)/lm-weights.json $(LM_SEARCH) $(DEVICE_ARGS)

score-ctc-lm: $(foreach p,$(LM_PARTS),$(CTC)/wer-$(p)-lm.txt) ## WER/CER of the LM decoding
	@cat $^

# ---- Imputer: expert alignments from the CTC baseline, training initialised from it, K-step decoding ----
# Decodings are named <part>-k<K> or <part>-adaptive, e.g. test-k8 or dev-clean-adaptive. With several
# K in STEPS one process decodes a part at all of them; any other decoding has a rule of its own.
IMP_DECODES := $(foreach p,$(IMP_PARTS),$(foreach k,$(STEPS),$(p)-k$(k)) $(if $(THRESHOLD),$(p)-adaptive))
imp_mode = $(lastword $(subst -, ,$(1)))
imp_part = $(patsubst %-$(call imp_mode,$(1)),%,$(1))
imp_args = $(if $(filter adaptive,$(call imp_mode,$(1))),--adaptive $(THRESHOLD),--steps $(patsubst k%,%,$(call imp_mode,$(1))))

.PHONY: align

align: $(ALIGNED) ## forced alignments of the training cuts under the CTC model (expert); ALIGN_HOURS: a subset
$(ALIGNED): $(CTC)/model.pt $(FBANK)/.done
	$(ASR) align --model $< --cuts $(TRAIN_CUTS) --out $@ \
	  $(if $(ALIGN_HOURS),--max-hours $(ALIGN_HOURS) $(if $(SEED),--seed $(SEED))) $(DEVICE_ARGS)

# $(call imputer_sweep_rule,<exp dir>,<part>): the part decoded at every K of STEPS (two or more) by one
# process, which names each decoding <part>-k<K>
define imputer_sweep_rule
$(foreach k,$(STEPS),$(1)/hyps-$(2)-k$(k).jsonl $(1)/wer-$(2)-k$(k).txt) &: $(1)/model.pt
	$(ASR) decode-imputer --model $$< --cuts $(call cuts,$(2)) --out-dir $(1) --name $(2) \
	  --steps $(STEPS) $(DEVICE_ARGS)
endef

# One Imputer experiment per inject_layer: $(IMP) feeds the alignment at the input (k = 0, the paper's
# model); $(IMP_INJ) adds it after block INJECT_LAYER, so decoding runs the blocks below once.
# $(call imputer_rules,<exp dir>,<extra --set>,<target suffix>) defines train/package/decode/score/plot.
define imputer_rules
TRAIN_IMPUTER$(3) = $(TRAIN_LAUNCH) train-imputer --config $(IMPUTER_CONF) $(IMP_SETS) $(2) --exp-dir $(1) --resume \
  --bpe $(BPE) --init-from $(CTC)/model.pt --train-cuts $(ALIGNED) --dev-cuts $(DEV_CUTS)
train-imputer$(3): $(ALIGNED)
	$$(TRAIN_IMPUTER$(3))
$(1)/train.done: $(ALIGNED)
	$$(TRAIN_IMPUTER$(3))
$(if $(word 2,$(STEPS)),$(foreach p,$(IMP_PARTS),$(eval $(call imputer_sweep_rule,$(1),$(p)))))
# Before model_rules: of two pattern rules with stems alike, make takes the first, and this one scores too
$(1)/hyps-%.jsonl $(1)/wer-%.txt: $(1)/model.pt
	$(ASR) decode-imputer --model $$< --cuts $$(call cuts,$$(call imp_part,$$*)) \
	  --out-dir $(1) --name $$* $$(call imp_args,$$*) $(DEVICE_ARGS)
$(call model_rules,$(1),Imputer$(3))
package-imputer$(3): $(1)/model.pt
decode-imputer$(3): $(foreach d,$(IMP_DECODES),$(1)/hyps-$(d).jsonl)
score-imputer$(3): $(foreach d,$(IMP_DECODES),$(1)/wer-$(d).txt)
	@for f in $$^; do echo "$$$$(basename $$$$f .txt | sed 's/^wer-//'): $$$$(cat $$$$f)"; done
plot-imputer$(3): $(1)/training.png
.PHONY: train-imputer$(3) package-imputer$(3) decode-imputer$(3) score-imputer$(3) plot-imputer$(3)
endef

$(eval $(call imputer_rules,$(IMP),,))
$(eval $(call imputer_rules,$(IMP_INJ),--set model.inject_layer=$(INJECT_LAYER),-inject))

train-imputer: ## train the Imputer from the CTC weights (resumes); train-imputer-inject: inject_layer=INJECT_LAYER
package-imputer: ## average the last checkpoints into model.pt (also package-imputer-inject)
decode-imputer: ## K-step (STEPS) and adaptive (THRESHOLD) decoding of IMP_PARTS (also decode-imputer-inject)
score-imputer: ## WER/CER of every Imputer decoding (also score-imputer-inject)
plot-imputer: ## PNG of the Imputer's training curves (also plot-imputer-inject)

# ---- Does the Imputer read its input? The probe on dev: masked-frame NLL and accuracy when shown part of
# the expert alignment, nothing, its own greedy output or random tokens; token/acoustic norms; K=1 vs K=B ----
.PHONY: probe-imputer
probe-imputer: $(IMP)/probe-$(DEV_PART).json ## input-use probe of the Imputer on DEV_PART (probe-<part>.md, .json)
$(IMP)/probe-$(DEV_PART).json: $(IMP)/model.pt
	$(ASR) probe --model $< --cuts $(DEV_CUTS) --out $@ | tee $(IMP)/probe-$(DEV_PART).md

# ---- The Imputer with the word LM: K-1 imputation steps, then the lexicon search over the log-probs of
# the K-th evaluation (K = LM_STEPS); its LM weight is tuned on dev like CTC's. One set of rules per
# Imputer experiment: $(call imputer_lm_rules,<exp dir>,<target suffix>) ----
LM_STEPS ?= 8

define imputer_lm_rules
tune-lm-imputer$(2): $(1)/lm-weights-k$(LM_STEPS).json
$(1)/lm-weights-k$(LM_STEPS).json: $(1)/model.pt $(LM)
	$(ASR) tune-lm --model $$< --steps $(LM_STEPS) --cuts $(DEV_CUTS) --lexicon $(LEXICON) \
	  --arpa $(LM) $(LM_GRID) $(LM_SEARCH) --out $$@
decode-imputer-lm$(2): $(1)/hyps-$(TEST_PART)-k$(LM_STEPS)lm.jsonl
$(1)/hyps-%-k$(LM_STEPS)lm.jsonl $(1)/wer-%-k$(LM_STEPS)lm.txt: $(1)/model.pt $(1)/lm-weights-k$(LM_STEPS).json
	$(ASR) decode-imputer --model $$< --cuts $$(call cuts,$$*) --out-dir $(1) --name $$*-k$(LM_STEPS)lm \
	  --steps $(LM_STEPS) --lexicon $(LEXICON) --arpa $(LM) --lm-weights $(1)/lm-weights-k$(LM_STEPS).json \
	  $(LM_SEARCH) $(DEVICE_ARGS)
score-imputer-lm$(2): $(1)/wer-$(TEST_PART)-k$(LM_STEPS)lm.txt
	@cat $$^
.PHONY: tune-lm-imputer$(2) decode-imputer-lm$(2) score-imputer-lm$(2)
endef

$(eval $(call imputer_lm_rules,$(IMP),))
$(eval $(call imputer_lm_rules,$(IMP_INJ),-inject))

tune-lm-imputer: ## LM weight of the Imputer's K-th step, by DEV_PART WER (also tune-lm-imputer-inject)
decode-imputer-lm: ## Imputer K-step + LM search on TEST_PART (also decode-imputer-lm-inject)
score-imputer-lm: ## WER/CER of the Imputer with the LM (also score-imputer-lm-inject)

# ---- The matched-budget CTC baseline: the CTC model trained on with the CTC loss for the Imputer's schedule
# (same config and training clock), so that the Imputer's gain is not just more training. It reads the whole
# training set: the aligned subset exists for the expert alignments only, and CTC, at about twice the Imputer's
# speed, ran out of it after 1.5 of each 2 minutes on a fast machine (the 2026-12-05 synth demo) ----
TRAIN_MATCHED = $(TRAIN_LAUNCH) train --config $(IMPUTER_CONF) $(IMP_SETS) --exp-dir $(MATCHED) --resume --bpe $(BPE) \
  --init-from $(CTC)/model.pt --train-cuts $(TRAIN_CUTS) --dev-cuts $(DEV_CUTS)

.PHONY: train-ctc-matched package-ctc-matched decode-ctc-matched score-ctc-matched

train-ctc-matched: $(CTC)/model.pt ## CTC baseline with the same total training budget as the Imputer
	$(TRAIN_MATCHED)
$(MATCHED)/train.done: $(CTC)/model.pt
	$(TRAIN_MATCHED)

$(eval $(call model_rules,$(MATCHED),CTC-matched))
$(eval $(call greedy_rule,$(MATCHED)))
package-ctc-matched: $(MATCHED)/model.pt
decode-ctc-matched: $(foreach p,$(DEV_PART) $(TEST_PART),$(MATCHED)/hyps-$(p)-greedy.jsonl)
score-ctc-matched: $(foreach p,$(DEV_PART) $(TEST_PART),$(MATCHED)/wer-$(p)-greedy.txt) ## WER of the matched-budget CTC baseline
	@cat $^

# ---- Comparison on TEST_PART: WER and decoding cost against the number of steps, one utterance imputed
# step by step ----
COMPARED_IMPS := $(IMP) $(if $(filter yes,$(WITH_INJECT)),$(IMP_INJ))
COMPARE_SCORES := $(CTC)/wer-$(TEST_PART)-greedy.txt $(MATCHED)/wer-$(TEST_PART)-greedy.txt \
  $(if $(filter yes,$(WITH_LM)),$(CTC)/wer-$(TEST_PART)-lm.txt \
    $(foreach e,$(COMPARED_IMPS),$(e)/wer-$(TEST_PART)-k$(LM_STEPS)lm.txt)) \
  $(foreach e,$(COMPARED_IMPS),$(foreach k,$(STEPS),$(e)/wer-$(TEST_PART)-k$(k).txt) \
    $(if $(THRESHOLD),$(e)/wer-$(TEST_PART)-adaptive.txt))
COMPARE_EXPS = --exp CTC=$(CTC) --exp CTC-matched=$(MATCHED) --exp Imputer=$(IMP) \
  $(if $(filter yes,$(WITH_INJECT)),--exp Imputer-inject$(INJECT_LAYER)=$(IMP_INJ))

.PHONY: compare

compare: $(COMPARE_SCORES) $(EXP)/imputation.png ## compare-TEST_PART.md, wer_vs_steps.png, imputation.png; prints the table
	$(ASR) compare $(COMPARE_EXPS) --part $(TEST_PART) --out-md $(EXP)/compare-$(TEST_PART).md \
	  --out-png $(EXP)/wer_vs_steps.png
$(EXP)/imputation.png: $(IMP)/model.pt $(FBANK)/.done
	$(ASR) show-imputation --model $< --cuts $(call cuts,$(TEST_PART)) --out $@

# ---- Every decoding and score of the CTC baseline and the Imputer ----
decode: decode-ctc decode-imputer ## CTC greedy (EVAL_PARTS) and Imputer (IMP_PARTS) decoding
score: $(foreach p,$(EVAL_PARTS),$(CTC)/wer-$(p)-greedy.txt) $(foreach d,$(IMP_DECODES),$(IMP)/wer-$(d).txt) ## WER/CER and per-utterance errors of every decoding

clean: ## remove this setting's experiments, EXP (keeps the corpus, manifests and features)
	rm -rf $(EXP)

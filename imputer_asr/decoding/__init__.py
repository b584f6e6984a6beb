"""Decoding: the decoder interface and the one loop over a CutSet (decoder.py), CTC greedy search (ctc.py),
Imputer K-step and adaptive decoding (imputer.py) and the lexicon-constrained LM search (lm_search.py)."""

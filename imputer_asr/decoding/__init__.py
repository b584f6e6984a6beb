"""Decoding: CTC greedy search, Imputer K-step decoding and the lexicon-constrained LM search."""

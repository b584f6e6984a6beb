"""Evaluation: WER/CER scoring, the input-use probe, a pocketsphinx peer, tables and pictures."""

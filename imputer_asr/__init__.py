"""imputer_asr: speech recognition with the Imputer and a conformer-CTC baseline."""

__version__ = "0.1.0"

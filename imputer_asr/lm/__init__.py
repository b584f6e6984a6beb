"""Word n-gram language model (ARPA) and the lexicon that spells words in BPE pieces."""

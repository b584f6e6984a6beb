"""Data: a LibriSpeech-layout corpus to padded batches.

``synth`` renders the offline corpus, ``prepare`` turns a corpus into lhotse manifests and stored
fbank features, ``augment`` draws waveform effects per training cut, ``tokenizer`` owns the BPE and
its special ids, ``dataset`` batches cuts for training and decoding, ``audio`` reads a user's files.
"""

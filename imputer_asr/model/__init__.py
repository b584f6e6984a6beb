"""The network and what it is trained with.

``conformer`` is the whole network (audio + alignment tokens in, per-frame token posteriors out),
``losses`` the batch-first CTC and Imputer losses, ``alignment`` forced (Viterbi) alignment and the
collapse of a path to labels.
"""

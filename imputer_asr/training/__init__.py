"""Training: the loop shared by the CTC baseline and the Imputer.

``loop`` runs epochs (clock, validation, resume, lock), ``imputer`` holds the Imputer objective and
its expert and learner alignments, ``masking`` the block masking of alignments, ``distributed``
torchrun data parallelism, ``checkpoint`` atomic checkpoints, averaging and the packaged model.
"""

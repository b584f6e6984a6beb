"""What training the Imputer needs beyond CTC: expert alignments of the training cuts, and its objective.

The expert alignment of a cut is the forced (Viterbi) alignment of its transcript under a trained
CTC model, computed once by :func:`align_cuts` and stored in the cut manifest. The objective
(:func:`imputer_objective`) masks that alignment block-wise (:func:`imputer_asr.training.masking.block_mask`,
k ~ U{1..B} masked frames per block), feeds the shown tokens to the network and scores the
transcript with the Imputer loss: the CTC dynamic program restricted to the alignments that agree
with the shown frames, plus the cross-entropy of the shown frames. With learner roll-in the alignment
of a share of the utterances is instead the forced alignment under the model being trained.

Alignments are at the encoder frame rate (T' = ((T - 1) // 2 - 1) // 2 for T fbank frames), so a
stored alignment is only valid for the features it was computed from.

>>> # objective = imputer_objective(block_size=8, ctc_weight=0.5, learner_fraction=0.0)
>>> # fit(cfg, exp_dir, align_cuts(ctc_model, train_cuts, tokenizer), dev_cuts, tokenizer, objective)
"""

from __future__ import annotations

import logging
import random

import torch
from lhotse import CutSet
from torch import Tensor

from imputer_asr.config import DataConfig
from imputer_asr.data.dataset import ALIGNMENT_FIELD, make_loader, with_progress
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.model.alignment import forced_align, min_alignment_length
from imputer_asr.model.conformer import ImputerModel, subsampled_lengths
from imputer_asr.model.losses import ctc_loss, imputer_loss
from imputer_asr.training.loop import Objective
from imputer_asr.training.masking import block_mask

__all__ = [
    "imputer_objective",
    "imputer_start",
    "learner_alignment",
    "align_cuts",
    "sample_hours",
    "check_cut_alignments",
]

log = logging.getLogger(__name__)


def imputer_objective(
    block_size: int = 8,
    ctc_weight: float = 0.0,
    learner_fraction: float = 0.0,
    score_observed: bool = True,
    greedy_fraction: float = 0.0,
    generator: torch.Generator | None = None,
) -> Objective:
    """The Imputer training objective for :func:`imputer_asr.training.loop.fit`.

    For a batch: the alignment is ``batch["alignments"]`` (the expert, from :func:`align_cuts`) or,
    for a random ``learner_fraction`` of the utterances (and all of a batch without alignments,
    such as the dev set's), the forced alignment under the model itself (:func:`learner_alignment`:
    the paper's learner roll-in); it is block-masked, the network reads the shown tokens, and the
    loss is the Imputer loss summed over utterances (utterances without a consistent alignment
    count 0), plus ``ctc_weight`` times the CTC loss of the all-[MASK] network on the same
    acoustic encoding (joint training: the same network stays a CTC model).

    Args:
        block_size: B of the block masking.
        ctc_weight: weight of the auxiliary CTC term; 0 leaves it out (and saves a forward pass).
        learner_fraction: share of utterances, in [0, 1], aligned under the model being trained
            instead of by the stored expert.
        score_observed: score the shown frames too (see :func:`imputer_asr.model.losses.imputer_loss`).
        greedy_fraction: share of utterances, in [0, 1], shown their own greedy alignment (the argmax
            of the all-[MASK] pass, block-masked) and scored with the CTC loss over every alignment:
            the states K-step decoding visits, with its mistakes, and a target that corrects them.
        generator: randomness of the masks and of the roll-in choice (default: torch's global one).

    Returns:
        ``(model, batch) -> (summed loss, number of target tokens)``.

    Raises (when called):
        ValueError: when a stored alignment's length differs from the model's output length.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if ctc_weight < 0:
        raise ValueError(f"ctc_weight must be >= 0, got {ctc_weight}")
    if not 0.0 <= learner_fraction <= 1.0:
        raise ValueError(f"learner_fraction must be in [0, 1], got {learner_fraction}")
    if not 0.0 <= greedy_fraction <= 1.0:
        raise ValueError(f"greedy_fraction must be in [0, 1], got {greedy_fraction}")

    def objective(model: ImputerModel, batch: dict) -> tuple[Tensor, int]:
        features, feature_lengths = batch["features"], batch["feature_lengths"]
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        n = features.size(0)
        device = generator.device if generator is not None else features.device
        if "alignments" in batch:
            learner = torch.rand(n, generator=generator, device=device).to(features.device) < learner_fraction
        else:
            learner = torch.ones(n, dtype=torch.bool, device=features.device)
        own = None
        if learner.any():
            own = learner_alignment(model, features, feature_lengths, targets, target_lengths)
        hidden, lengths = model.encode_acoustic(features, feature_lengths)
        if learner.all():
            alignment = own
        else:
            alignment = _expert_alignment(batch, lengths, hidden.size(1))
            if own is not None:
                alignment = torch.where(learner.unsqueeze(1), own.to(alignment.device), alignment)
        blank = model.cfg.blank_id
        alignment = alignment.to(hidden.device)
        ctc_log_probs = None
        if ctc_weight > 0 or greedy_fraction > 0:
            ctc_log_probs = model.impute(hidden, lengths, model.all_mask(hidden))
        greedy = torch.zeros(n, dtype=torch.bool, device=hidden.device)
        if greedy_fraction > 0:
            greedy = torch.rand(n, generator=generator, device=device).to(hidden.device) < greedy_fraction
            own_greedy = ctc_log_probs.detach().argmax(-1).masked_fill(alignment < 0, -1)
            alignment = torch.where(greedy.unsqueeze(1), own_greedy, alignment)
        tokens_in, observed = block_mask(
            alignment, lengths, block_size, mask_id=model.cfg.mask_id, generator=generator
        )
        # Its own tokens may be wrong: no alignment need agree with them, so none is held to them.
        observed = observed.masked_fill(greedy.unsqueeze(1), -1)
        log_probs = model.impute(hidden, lengths, tokens_in)
        loss = imputer_loss(
            log_probs,
            targets,
            lengths,
            target_lengths,
            observed,
            blank=blank,
            reduction="none",
            zero_infinity=True,
            score_observed=score_observed,
        )
        if ctc_weight > 0:
            ctc = ctc_loss(
                ctc_log_probs,
                targets,
                lengths,
                target_lengths,
                blank=blank,
                reduction="none",
                zero_infinity=True,
            )
            loss = loss + ctc_weight * ctc
        return loss.sum(), int(target_lengths.sum())

    return objective


def imputer_start(weights: dict[str, Tensor], mask_id: int) -> dict[str, Tensor]:
    """A CTC model's weights as the start of an Imputer that computes exactly the CTC model's
    function whatever alignment it is shown.

    A CTC model has only ever read [MASK]: its other alignment-embedding rows are still their random
    initialisation, and would perturb its output as soon as tokens are shown. They become copies of
    the [MASK] row (as the public reference implementation does), and ``token_embed``, the
    alignment's own path, is zero, so the Imputer starts from the CTC model's output and learns to
    read its input from there.
    """
    weights = dict(weights)
    rows = weights["align_embed.weight"]
    weights["align_embed.weight"] = rows[mask_id].expand_as(rows).clone()
    weights["token_embed.weight"] = torch.zeros_like(weights.get("token_embed.weight", rows))
    return weights


def learner_alignment(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
) -> Tensor:
    """Forced alignment of the targets under ``model`` fed an all-[MASK] alignment: (N, T'), -1 padded.

    Runs without gradient and in eval mode (dropout off: the alignment the model would produce at
    test time; the mode is restored afterwards). Utterances too short for their targets get an
    all-blank alignment, whose Imputer loss is then infeasible (counted 0 with zero_infinity).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            log_probs, lengths = model(features, feature_lengths)
    finally:
        model.train(was_training)
    return _align_feasible(log_probs, lengths, targets, target_lengths, model.cfg.blank_id)[0]


def _align_feasible(
    log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, blank: int
) -> tuple[Tensor, Tensor]:
    """Forced alignment of the utterances that have one; (N, T') with all-blank rows (within the
    length) for the others, and the (N,) bool mask of the aligned ones."""
    targets = targets.to(log_probs.device)
    target_lengths = target_lengths.to(log_probs.device)
    lengths = lengths.to(log_probs.device)
    feasible = lengths >= min_alignment_length(targets, target_lengths)
    past = torch.arange(log_probs.size(1), device=log_probs.device) >= lengths.unsqueeze(1)
    alignment = torch.full(log_probs.shape[:2], blank, dtype=torch.long, device=log_probs.device)
    rows = feasible.nonzero().squeeze(1)
    if rows.numel():
        alignment[rows] = forced_align(
            log_probs[rows], lengths[rows], targets[rows], target_lengths[rows], blank
        )
    return alignment.masked_fill(past, -1), feasible


def _expert_alignment(batch: dict, lengths: Tensor, width: int) -> Tensor:
    """The batch's stored alignments, checked against the model's output lengths, as (N, width)."""
    alignments = batch["alignments"]
    stored = batch.get("alignment_lengths")
    if stored is None:
        stored = (alignments >= 0).sum(dim=1)
    stored = stored.to(lengths.device)
    wrong = (stored != lengths).nonzero().squeeze(1).tolist()
    if wrong:
        cut_ids = batch.get("cut_ids", [str(i) for i in range(len(lengths))])
        details = ", ".join(f"{cut_ids[i]} ({int(stored[i])} vs {int(lengths[i])})" for i in wrong[:5])
        raise ValueError(
            f"stored alignment length differs from the model's output length for {len(wrong)} cut(s): "
            f"{details}; the alignments were computed from other features or another subsampling "
            f"(rerun the align stage)"
        )
    if alignments.size(1) >= width:
        return alignments[:, :width]
    return torch.nn.functional.pad(alignments, (0, width - alignments.size(1)), value=-1)


def check_cut_alignments(cuts: CutSet) -> None:
    """Raise ValueError unless every cut carries an alignment of ``subsampled_lengths(num_frames)``
    frames: the check the train-imputer stage runs before training starts."""
    missing, wrong = [], []
    for cut in cuts:
        if not cut.has_custom(ALIGNMENT_FIELD):
            missing.append(cut.id)
            continue
        stored = cut.custom[ALIGNMENT_FIELD]
        expected = int(subsampled_lengths(torch.tensor(cut.num_frames)))
        if isinstance(stored, (list, tuple)) and len(stored) != expected:  # arrays: checked per batch
            wrong.append(cut.id)
    if missing:
        raise ValueError(
            f"{len(missing)} cut(s) have no '{ALIGNMENT_FIELD}' (e.g. {missing[0]}): run the align "
            f"stage on these cuts, or set imputer.learner_fraction=1"
        )
    if wrong:
        raise ValueError(
            f"{len(wrong)} cut(s) have an alignment whose length does not match their features "
            f"(e.g. {wrong[0]}): rerun the align stage on the current features"
        )


def sample_hours(cuts: CutSet, hours: float, seed: int = 0) -> CutSet:
    """A seeded random subset of ``cuts`` with at least ``hours`` of audio (all of them when they
    hold less), in the input order.

    The Imputer continues a trained CTC model for a few hundred updates, which read only part of a
    speed-perturbed training set; aligning just the audio it will read saves most of the align
    stage. Cuts are drawn without replacement until the total reaches ``hours``, so the subset
    overshoots by less than one cut.

    >>> from lhotse.testing.dummies import DummyManifest
    >>> cuts = DummyManifest(CutSet, begin_id=0, end_id=10)  # ten 1-second cuts
    >>> len(sample_hours(cuts, 3.5 / 3600)), len(sample_hours(cuts, 1.0))
    (4, 10)
    """
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}")
    cuts = cuts.to_eager()
    budget = hours * 3600.0
    if sum(cut.duration for cut in cuts) <= budget:
        return cuts
    order = list(range(len(cuts)))
    random.Random(seed).shuffle(order)
    chosen, total = [], 0.0
    for index in order:
        if total >= budget:
            break
        chosen.append(index)
        total += cuts[index].duration
    return CutSet.from_cuts(cuts[i] for i in sorted(chosen))


@torch.inference_mode()
def align_cuts(
    model: ImputerModel, cuts: CutSet, tokenizer: Tokenizer, *, max_duration: float = 200.0
) -> CutSet:
    """Expert alignments: the forced alignment of every cut's transcript under a CTC ``model``.

    Each returned cut carries ``cut.custom["alignment"]``: a list of ints, one token per encoder
    frame (blank 0, pieces 1..C-1). Stored inline in the manifest rather than in lhotse array
    storage: the manifest stays the single file a stage writes and the training loader reads, with
    no side storage to keep in sync with it, and it stays readable. The cost is size: about three
    bytes per 40 ms frame before gzip (a few MB for the synthetic corpus, roughly 1 GB uncompressed
    for 3 x 960 h of speed-perturbed LibriSpeech, where array storage would be the better choice).

    Cuts that cannot be aligned (fewer encoder frames than their labels need) are dropped, with a
    logged count. The returned cuts keep the input order.

    Args:
        model: the CTC model (an Imputer fed all-[MASK]); run in eval mode.
        cuts: cuts with features and supervisions.
        tokenizer: the model's tokenizer (its vocabulary must match the model's).
        max_duration: seconds of audio per batch.
    """
    if tokenizer.vocab_size != model.cfg.vocab_size or tokenizer.mask_id != model.cfg.mask_id:
        raise ValueError(
            f"tokenizer ({tokenizer.vocab_size} classes) does not match the model "
            f"({model.cfg.vocab_size} classes)"
        )
    model.eval()
    device = next(model.parameters()).device
    loader = make_loader(cuts, tokenizer, DataConfig(max_duration=max_duration), train=False)
    aligned: dict[str, list[int]] = {}
    for batch in with_progress(loader, len(cuts), "align"):
        log_probs, lengths = model(batch["features"].to(device), batch["feature_lengths"].to(device))
        alignment, feasible = _align_feasible(
            log_probs, lengths, batch["targets"], batch["target_lengths"], model.cfg.blank_id
        )
        for i, cut_id in enumerate(batch["cut_ids"]):
            if feasible[i]:
                aligned[cut_id] = alignment[i, : int(lengths[i])].tolist()
    out = CutSet.from_cuts(
        cut.with_custom(ALIGNMENT_FIELD, aligned[cut.id]) for cut in cuts if cut.id in aligned
    )
    dropped = len(cuts) - len(aligned)
    if dropped:
        log.warning("dropped %d of %d cuts that cannot be aligned (too short)", dropped, len(cuts))
    log.info("aligned %d cuts", len(aligned))
    return out

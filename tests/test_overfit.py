"""A tiny conformer overfits a handful of synthesized utterances until greedy CTC decoding
reproduces their transcripts exactly: the model, the loss, the batching and the decoder agree, in
float32 and under the bfloat16 autocast of ``train.bf16``."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from lhotse import CutSet

from imputer_asr.config import DataConfig, ModelConfig
from imputer_asr.data.dataset import make_loader
from imputer_asr.decoding.ctc import ctc_greedy_search
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.loop import ctc_objective


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_tiny_model_overfits_to_exact_transcripts(tiny_corpus, bf16: bool):
    torch.manual_seed(0)
    tok = tiny_corpus.tokenizer
    cuts = CutSet.from_file(tiny_corpus.fbank_cuts("train")).to_eager().subset(first=6)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        blank_id=tok.blank_id,
        mask_id=tok.mask_id,
        d_model=96,
        num_heads=4,
        ff_dim=192,
        num_layers=2,
        dropout=0.0,
    )
    model = ImputerModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = DataConfig(max_duration=1000.0, spec_augment=False, num_workers=0)
    batch = next(iter(make_loader(cuts, tok, data, train=False)))
    assert len(batch["texts"]) == 6
    for step in range(400):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss_sum, tokens = ctc_objective(model, batch)
        optimizer.zero_grad()
        (loss_sum / tokens).backward()
        optimizer.step()
        if step % 25 == 24:
            model.eval()
            with torch.no_grad():
                log_probs, lengths = model(batch["features"], batch["feature_lengths"])
            hyps = [tok.decode(ids) for ids in ctc_greedy_search(log_probs, lengths, tok.blank_id)]
            model.train()
            if hyps == batch["texts"]:
                break
    assert hyps == batch["texts"], f"not overfitted after {step + 1} steps, loss {loss_sum / tokens:.3f}"

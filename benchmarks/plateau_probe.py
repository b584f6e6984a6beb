"""How fast does CTC leave the all-blank plateau? A short training run with the features in memory.

This is the probe behind the choice of a near-character vocabulary and lr 1e-3 for the synth
recipe: it trains the recipe's conformer (or a BiLSTM) on the stored fbank of the demo corpus
with plain bucketed batches, constant learning rate after warm-up and no SpecAugment, and prints
the training loss every 50 updates and greedy dev WER/CER every 300. Tune on dev only.

    .venv/bin/python benchmarks/plateau_probe.py --vocab 40 --lr 1e-3 --warmup 500 --minutes 8 --aug
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import jiwer
import torch
import torch.nn.functional as F
from lhotse import CutSet

from imputer_asr.config import ModelConfig
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.decoding.ctc import ctc_greedy_search
from imputer_asr.model.conformer import ImputerModel


class BiLstmCtc(torch.nn.Module):
    """Frames stacked by 4, 3 BiLSTM layers of 256: the classic sanity baseline."""

    def __init__(self, vocab_size: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.inp = torch.nn.Linear(320, 256)
        self.rnn = torch.nn.LSTM(256, 256, num_layers=3, bidirectional=True, batch_first=True)
        self.out = torch.nn.Linear(512, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        t = x.size(1) // 4
        x = x[:, : t * 4].reshape(x.size(0), t, 320)
        out_lengths = lengths // 4
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.inp(x), out_lengths, batch_first=True, enforce_sorted=False
        )
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)
        return self.out(y).log_softmax(-1), out_lengths


def _pad(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.size(0) for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


def _batches(frames: list[int], max_seconds: float) -> list[list[int]]:
    """Length-sorted batches of at most ``max_seconds`` of audio, in random order."""
    batches, current, seconds = [], [], 0.0
    for i in sorted(range(len(frames)), key=frames.__getitem__):
        if current and seconds + frames[i] / 100 > max_seconds:
            batches.append(current)
            current, seconds = [], 0.0
        current.append(i)
        seconds += frames[i] / 100
    batches.append(current)
    random.shuffle(batches)
    return batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("data/synth/demo"))
    p.add_argument("--vocab", type=int, default=40)
    p.add_argument("--model", choices=("conformer", "lstm"), default="conformer")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=144)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--batch-seconds", type=float, default=30.0)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--aug", action="store_true", help="all training cuts (speed-perturbed copies too)")
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)

    cuts = CutSet.from_file(args.data_dir / "fbank/cuts_train_fbank.jsonl.gz")
    if not args.aug:
        cuts = cuts.filter(lambda c: "_sp" not in c.id)
    cuts = cuts.to_eager()
    texts = [c.supervisions[0].text for c in cuts]
    tok_path = Path(f"/tmp/plateau_probe_bpe{args.vocab}.model")
    tok = (
        Tokenizer.from_file(tok_path)
        if tok_path.is_file()
        else train_tokenizer(sorted(set(texts)), tok_path, args.vocab)
    )
    train = [(torch.from_numpy(c.load_features()), tok.encode(t)) for c, t in zip(cuts, texts, strict=True)]
    dev_cuts = CutSet.from_file(args.data_dir / "fbank/cuts_dev_fbank.jsonl.gz").subset(first=150)
    dev = [(torch.from_numpy(c.load_features()), c.supervisions[0].text) for c in dev_cuts]
    sample = torch.cat([f for f, _ in train[:500]])
    mean, std = sample.mean(0), sample.std(0)
    if args.model == "lstm":
        model = BiLstmCtc(tok.vocab_size, mean, std)
    else:
        cfg = ModelConfig(
            vocab_size=tok.vocab_size,
            mask_id=tok.vocab_size,
            d_model=args.d_model,
            ff_dim=4 * args.d_model,
            num_layers=args.layers,
            dropout=args.dropout,
        )
        model = ImputerModel(cfg)
        model.set_feature_stats(mean, std)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{len(train)} training cuts, vocab {tok.vocab_size}, {millions:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-3)

    def evaluate() -> tuple[float, float]:
        model.eval()
        refs, hyps = [], []
        with torch.inference_mode():
            for start in range(0, len(dev), 16):
                chunk = dev[start : start + 16]
                log_probs, lengths = model(*_pad([f for f, _ in chunk]))
                hyps += [tok.decode(ids) for ids in ctc_greedy_search(log_probs, lengths, tok.blank_id)]
                refs += [text for _, text in chunk]
        model.train()
        return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)

    step, losses, start = 0, [], time.time()
    frames = [f.size(0) for f, _ in train]
    while time.time() - start < args.minutes * 60:
        for batch in _batches(frames, args.batch_seconds):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
            x, lengths = _pad([train[i][0] for i in batch])
            targets = [torch.tensor(train[i][1]) for i in batch]
            target_lengths = torch.tensor([len(t) for t in targets])
            log_probs, out_lengths = model(x, lengths)
            loss = (
                F.ctc_loss(
                    log_probs.transpose(0, 1),
                    torch.cat(targets),
                    out_lengths,
                    target_lengths,
                    blank=tok.blank_id,
                    reduction="sum",
                    zero_infinity=True,
                )
                / target_lengths.sum()
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            elapsed = time.time() - start
            if step % 50 == 0:
                print(f"step {step:5d}  {elapsed:5.0f} s  loss {sum(losses[-50:]) / 50:.3f}", flush=True)
            if step % 300 == 0 or elapsed > args.minutes * 60:
                wer, cer = evaluate()
                print(
                    f"  dev WER {100 * wer:.1f}%  CER {100 * cer:.1f}%  at step {step}, {elapsed:.0f} s",
                    flush=True,
                )
            if elapsed > args.minutes * 60:
                break


if __name__ == "__main__":
    main()

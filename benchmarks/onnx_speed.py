"""Real-time factor of the PyTorch network against its ONNX exports (onnxruntime float32 and int8).

Exports the packaged model (``imputer_asr.export.export_onnx``) to a temporary directory, then times
the three paths in the same run, on the same files and threads:

- network: fbank features of the files are computed once; the decoders (CTC greedy search, K-step
  Imputer decoding) run over them in batches of about ``--batch-seconds`` of audio, longest first,
  as ``transcribe`` batches its windows. The paths take turns within each repetition, so that load
  from other processes falls on all of them alike; the median and the best of ``--repeats`` passes
  are shown.
- end to end: ``Transcriber.transcribe`` over the files (reading, fbank, network, words), once per
  path after a warm-up.

RTF is processing seconds per second of audio (lower is faster); the ratios are PyTorch's time over
each path's. With the files' transcripts (LibriSpeech layout, ``*.trans.txt``) and a trained model it
also scores each path (WER) and counts the transcripts that differ from PyTorch's. ``--config``
times a randomly initialised model of that config instead of a packaged one (speed only).

    python benchmarks/onnx_speed.py --model recipes/synth/exp/ctc/model.pt data/synth/demo/corpus/test
    python benchmarks/onnx_speed.py --config recipes/synth/conf/ctc.json DIR --num-files 50
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from imputer_asr.data.audio import find_audio, open_audio
from imputer_asr.data.prepare import fbank_extractor
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.decoding.imputer import KStepDecoder
from imputer_asr.export import export_onnx, load_onnx
from imputer_asr.training.checkpoint import PackagedModel, load_packaged
from imputer_asr.transcription.transcribe import TranscribeOptions, Transcriber

Batch = tuple[torch.Tensor, torch.Tensor]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="packaged model.pt")
    source.add_argument("--config", type=Path, help="experiment config: time a random model of it")
    parser.add_argument("audio", nargs="+", help="audio files or directories (searched recursively)")
    parser.add_argument("--num-files", type=int, default=50, help="the first N files, by path")
    parser.add_argument("--decoders", nargs="+", choices=("ctc", "imputer"), default=["ctc", "imputer"])
    parser.add_argument("--steps", type=int, default=None, help="K of the Imputer decoder; default B")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=TranscribeOptions.batch_seconds)
    return parser.parse_args()


def _random_packaged(config: Path, texts: list[str], workdir: Path) -> PackagedModel:
    """A randomly initialised model of ``config``, with a tokenizer trained on ``texts``."""
    from imputer_asr.config import load_config
    from imputer_asr.data.tokenizer import train_tokenizer
    from imputer_asr.model.conformer import ImputerModel
    from imputer_asr.training.checkpoint import package_model

    cfg = load_config(config)
    tokenizer = train_tokenizer(texts * 5, workdir / "bpe.model", vocab_size=40)  # the demo's VOCAB
    ids = dict(vocab_size=tokenizer.vocab_size, blank_id=tokenizer.blank_id, mask_id=tokenizer.mask_id)
    model_cfg = dataclasses.replace(cfg.model, **ids, input_dim=cfg.features.num_mel_bins)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    torch.manual_seed(0)
    package_model(ImputerModel(cfg.model).state_dict(), cfg, tokenizer, workdir / "model.pt")
    return load_packaged(workdir / "model.pt")


def _references(files: list[str]) -> dict[str, str]:
    """Transcripts of ``files`` from the ``*.trans.txt`` beside them (LibriSpeech layout)."""
    refs: dict[str, str] = {}
    for listing in {Path(f).parent for f in files}:
        for trans in listing.glob("*.trans.txt"):
            for line in trans.read_text().splitlines():
                utt, _, text = line.partition(" ")
                refs[str(listing / f"{utt}.flac")] = text
    return refs


def _batches(
    packaged: PackagedModel, files: list[str], batch_seconds: float
) -> tuple[list[Batch], float, list[int]]:
    """Fbank features of ``files`` in padded batches (longest first), the seconds of audio, and the
    files' indices in the batches' order (to put references beside the outputs)."""
    features_cfg = packaged.config.features
    extractor = fbank_extractor(features_cfg)
    feats = []
    for path in files:
        source = open_audio(path)
        samples = source.read(0, source.num_samples, features_cfg.sample_rate)
        feats.append(torch.from_numpy(extractor.extract(samples, features_cfg.sample_rate)))
    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]))
    frames_per_batch = batch_seconds / features_cfg.frame_shift
    batches, current = [], []
    for f in (feats[i] for i in order):
        if current and (len(current) + 1) * len(current[0]) > frames_per_batch:
            batches.append(current)
            current = []
        current.append(f)
    batches.append(current)
    seconds = sum(len(f) for f in feats) * features_cfg.frame_shift
    padded = [(pad_sequence(b, batch_first=True), torch.tensor([len(f) for f in b])) for b in batches]
    return padded, seconds, order


def _network_seconds(model: torch.nn.Module, decoder: Callable, batches: list[Batch]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for features, lengths in batches:
            decoder(model, features, lengths)
    return time.perf_counter() - start


def _time_networks(
    paths: dict[str, PackagedModel], decoders: dict[str, Callable], batches: list[Batch], repeats: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """(median, best) wall seconds of each (path, decoder) over ``repeats`` passes, the paths taking
    turns. On a loaded machine the best pass is the nearest to the work itself, the median says
    what the load did to it."""
    times: dict[tuple[str, str], list[float]] = {}
    for name, decoder in decoders.items():
        for packaged in paths.values():
            _network_seconds(packaged.model, decoder, batches[-1:])  # warm-up: the shortest batch
        for _ in range(repeats):
            for path, packaged in paths.items():
                times.setdefault((path, name), []).append(_network_seconds(packaged.model, decoder, batches))
    return {key: (statistics.median(values), min(values)) for key, values in times.items()}


def _end_to_end(
    paths: dict[str, PackagedModel], files: list[str], decoder: str, steps: int | None, options
) -> dict[str, tuple[float, list[str]]]:
    """(wall seconds, transcripts) of one ``transcribe`` pass per path, after a one-file warm-up."""
    results = {}
    for path, packaged in paths.items():
        asr = Transcriber(packaged, "cpu", options)
        asr.transcribe(files[:1], decoder=decoder, steps=steps)
        start = time.perf_counter()
        transcripts = asr.transcribe(files, decoder=decoder, steps=steps)
        failed = [t.error for t in transcripts if t.error]
        if failed:
            raise SystemExit(f"{len(failed)} file(s) failed, e.g. {failed[0]}")
        results[path] = (time.perf_counter() - start, [t.text for t in transcripts])
    return results


def _wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return 100.0 * jiwer.wer(refs, hyps)


def _exports(packaged: PackagedModel, workdir: Path, threads: int) -> dict[str, PackagedModel]:
    """The three paths: the PyTorch model and its float32 and int8 ONNX exports."""
    paths = {"pytorch fp32": packaged}
    for precision, int8 in (("fp32", False), ("int8", True)):
        report = export_onnx(packaged, workdir / f"{precision}.onnx", int8=int8)
        paths[f"onnxruntime {precision}"] = load_onnx(report.path, threads=threads)
        print(
            f"exported {precision}: {report.bytes / 1e6:.1f} MB, "
            f"max |log-prob difference| on a random batch {report.max_abs_diff:.2e}"
        )
    return paths


def _report(args, paths, files: list[str], refs: dict[str, str], steps: int) -> None:
    """Time every path with CTC greedy search and K-step Imputer decoding; print a row each."""
    packaged = paths["pytorch fp32"]
    every = {"ctc": CTCGreedyDecoder(packaged.tokenizer.blank_id), "imputer": KStepDecoder(steps)}
    decoders = {name: every[name] for name in args.decoders}
    batches, audio, _ = _batches(packaged, files, args.batch_seconds)
    print(
        f"{len(files)} files, {audio:.1f} s of audio, {args.threads} threads, {len(batches)} batches "
        f"of <= {args.batch_seconds:.0f} s, network: median of {args.repeats} passes"
    )
    network = _time_networks(paths, decoders, batches, args.repeats)
    options = TranscribeOptions(batch_seconds=args.batch_seconds)
    print(
        "\nRTF: seconds per second of audio; x torch: PyTorch's time over the path's. network: median "
        f"and best of {args.repeats} passes; e2e: transcribe (read, fbank, network, words), one pass."
    )
    header = f"{'path':<18} {'decoder':<12} {'network RTF':>11} {'best':>7} {'x torch':>7} {'best':>6}"
    header += f" {'e2e RTF':>8} {'x torch':>7}"
    print(header + (f" {'WER %':>6} {'!= torch':>8}" if refs else ""))
    for name in decoders:
        whole = _end_to_end(paths, files, name, steps if name == "imputer" else None, options)
        (base_med, base_best), (base_e2e, base_texts) = network["pytorch fp32", name], whole["pytorch fp32"]
        label = name if name == "ctc" else f"imputer K={steps}"
        for path in paths:
            (med, best), (seconds, texts) = network[path, name], whole[path]
            row = (
                f"{path:<18} {label:<12} {med / audio:11.4f} {best / audio:7.4f} {base_med / med:7.2f} "
                f"{base_best / best:6.2f} {seconds / audio:8.4f} {base_e2e / seconds:7.2f}"
            )
            if refs:
                wer = _wer([refs[f] for f in files], texts)
                differ = sum(a != b for a, b in zip(texts, base_texts, strict=True))
                row += f" {wer:6.2f} {differ:5d}/{len(files)}"
            print(row, flush=True)


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(find_audio(args.audio))[: args.num_files]
    refs = _references(files)
    if refs and set(files) - set(refs):
        refs = {}  # not every file has its transcript: no scores
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as tmp:
        if args.model is not None:
            packaged = load_packaged(args.model)
        else:
            packaged = _random_packaged(args.config, sorted(set(refs.values())) or ["A B C"], Path(tmp))
            refs = {}  # a random model's WER says nothing
        print(f"{args.model or args.config} (random weights)" if args.model is None else str(args.model))
        paths = _exports(packaged, Path(tmp), args.threads)
        _report(args, paths, files, refs, args.steps or packaged.config.imputer.block_size)


if __name__ == "__main__":
    main()

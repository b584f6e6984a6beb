"""End-to-end tests of transcription: ``imputer_asr.load_model`` and ``imputer-asr transcribe`` on
real (synthesized) speech, bad inputs and bad models. The pieces have their own tests
(test_audio.py, test_words.py, test_subtitles.py).

The end-to-end tests use a tiny model trained here, in seconds, to reproduce three synthesized
utterances, each padded with silence to a 2 s slot, alone and in every ordered pair (and 2 s of
silence as nothing). Its transcripts of those inputs are known exactly, so reading, resampling,
down-mixing and stitching are checked against the true words, not against whatever a random
network happens to say. A recording of several slots cut into 4 s windows with 2 s of overlap
gives windows of exactly two slots: every utterance but the first and the last is seen whole by
two windows, and must come out once.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional

from imputer_asr.cli import main
from imputer_asr.cli.transcribe import TRANSCRIPT_FORMATS
from imputer_asr.config import ExperimentConfig, ModelConfig, config_to_dict
from imputer_asr.data.audio import AudioError, open_audio, plan_windows
from imputer_asr.data.prepare import fbank_extractor
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.decoding.ctc import ctc_greedy_search
from imputer_asr.files import torch_save_atomic
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.model.losses import ctc_loss
from imputer_asr.training.checkpoint import load_packaged, package_model
from imputer_asr.transcription.transcribe import TranscribeOptions, Transcriber, load_model
from imputer_asr.transcription.words import Word

REPO = Path(__file__).resolve().parents[1]
TEXTS = ("THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP")
RATE = 16000
SLOT = 2 * RATE
LONG_ORDER = (0, 1, 2, 0, 2, 1, 1)
WINDOWS = TranscribeOptions(window_seconds=4.0, overlap_seconds=2.0, batch_seconds=8.0)
TIME_TOLERANCE = 0.081  # two encoder frames


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Speech:
    """The three utterances, each in a 2 s slot: ``slots[i]`` (float32) and ``paths[i]`` (16-bit FLAC)."""

    slots: list[np.ndarray]
    paths: list[Path]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed (apt-get install espeak-ng sox)")
    from imputer_asr.data.synth import Speaker, synthesize

    root = tmp_path_factory.mktemp("speech")
    speaker = Speaker(0, "espeak-ng", "en-us", None, 170, 50)
    slots, paths = [], []
    for i, text in enumerate(TEXTS):
        raw = root / f"raw-{i}.flac"
        synthesize(speaker, text.lower() + ".", raw)
        samples, rate = sf.read(raw, dtype="float32")
        assert rate == RATE and len(samples) < SLOT
        before = (SLOT - len(samples)) // 2
        slot = np.pad(samples, (before, SLOT - len(samples) - before))
        paths.append(root / f"slot-{i}.flac")
        sf.write(paths[-1], slot, RATE, subtype="PCM_16")
        slots.append(sf.read(paths[-1], dtype="float32")[0])  # as the file holds it (16-bit)
    return Speech(slots, paths)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(list(TEXTS) * 20, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=30)


def _overfit(examples: list[tuple[np.ndarray, str]], tokenizer: Tokenizer) -> ImputerModel:
    """A tiny conformer trained with CTC until greedy search reproduces every example exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    extractor = fbank_extractor(ExperimentConfig().features)
    feats = [torch.from_numpy(extractor.extract(samples, RATE)) for samples, _ in examples]
    lengths = torch.tensor([f.size(0) for f in feats])
    features = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    ids = [torch.tensor(tokenizer.encode(text), dtype=torch.long) for _, text in examples]
    targets = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)
    target_lengths = torch.tensor([len(i) for i in ids])
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        blank_id=tokenizer.blank_id,
        mask_id=tokenizer.mask_id,
        subsampling_channels=8,
        d_model=48,
        num_heads=2,
        ff_dim=96,
        num_layers=2,
        conv_kernel=7,
        dropout=0.0,
    )
    model = ImputerModel(cfg)
    all_frames = torch.cat(feats)
    model.set_feature_stats(all_frames.mean(0), all_frames.std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    refs = [text for _, text in examples]
    for step in range(400):
        log_probs, out_lengths = model(features, lengths)
        loss = ctc_loss(log_probs, targets, out_lengths, target_lengths, blank=0, reduction="none")
        optimizer.zero_grad()
        (loss.sum() / target_lengths.sum()).backward()
        optimizer.step()
        if step % 20 == 19:
            with torch.no_grad():
                log_probs, out_lengths = model.eval()(features, lengths)
            model.train()
            hyps = [tokenizer.decode(h) for h in ctc_greedy_search(log_probs, out_lengths, 0)]
            if hyps == refs:
                break
    torch.set_num_threads(threads)
    assert hyps == refs, f"the tiny model did not learn its examples in {step + 1} steps"
    return model.eval()


@pytest.fixture(scope="module")
def trained(speech: Speech, tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(model weights, experiment config) of the tiny model, trained once per module."""
    examples = [(slot, text) for slot, text in zip(speech.slots, TEXTS, strict=True)]
    examples += [
        (np.concatenate([speech.slots[i], speech.slots[j]]), f"{TEXTS[i]} {TEXTS[j]}")
        for i in range(3)
        for j in range(3)
    ]
    examples.append((np.zeros(SLOT, dtype=np.float32), ""))
    model = _overfit(examples, tokenizer)
    return model.state_dict(), ExperimentConfig(model=model.cfg)


@pytest.fixture(scope="module")
def model_path(trained: tuple, tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model packaged as a CTC model."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    package_model(*trained, tokenizer, path, trained_as="ctc")
    return path


@pytest.fixture(scope="module")
def asr(model_path: Path) -> Transcriber:
    return load_model(model_path, options=WINDOWS)


@pytest.fixture(scope="module")
def long_path(speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slots in ``LONG_ORDER``, one 14 s recording (several windows of 4 s)."""
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, np.concatenate([speech.slots[i] for i in LONG_ORDER]), RATE, subtype="PCM_16")
    return path


# --- reading audio ------------------------------------------------------------------------------


def test_a_file_may_end_a_little_before_its_header_says(speech: Speech) -> None:
    """An mp3 header may only estimate the length: the last window may come up short by up to 1 s."""
    source = open_audio(speech.paths[0])
    source.num_samples += RATE // 2
    assert len(source.read(0, source.num_samples, RATE)) == SLOT
    with pytest.raises(AudioError, match="truncated"):
        source.read(0, SLOT + RATE // 4, RATE)  # a window that is not the last
    source.num_samples += 2 * RATE
    with pytest.raises(AudioError, match="ends at 2.00 s but the header announces 4.50 s"):
        source.read(0, source.num_samples, RATE)


# --- the Python API --------------------------------------------------------------------------------


def test_pieces_are_transcribed_exactly(asr: Transcriber, speech: Speech) -> None:
    transcripts = asr.transcribe(speech.paths)
    assert [t.text for t in transcripts] == list(TEXTS)
    assert [t.audio for t in transcripts] == [str(p) for p in speech.paths]
    for t in transcripts:
        assert t.error is None and t.duration == pytest.approx(2.0)
        assert " ".join(w.word for w in t.words) == t.text
        assert all(0 <= w.start < w.end <= t.duration for w in t.words)
        assert all(a.end <= b.start for a, b in zip(t.words, t.words[1:], strict=False))


def _same_words(a: list[Word], b: list[Word], offset: float = 0.0) -> bool:
    return [w.word for w in a] == [w.word for w in b] and all(
        abs(x.start - y.start - offset) <= TIME_TOLERANCE and abs(x.end - y.end - offset) <= TIME_TOLERANCE
        for x, y in zip(a, b, strict=True)
    )


def test_44k_stereo_gives_the_transcript_of_16k_mono(
    asr: Transcriber, speech: Speech, tmp_path: Path
) -> None:
    mono = speech.slots[0]
    resampled = torchaudio.functional.resample(torch.from_numpy(mono), RATE, 44100).numpy()
    stereo = np.stack([0.5 * resampled, 1.5 * resampled], axis=1)  # the mean is the signal
    sf.write(tmp_path / "pcm16.wav", stereo, 44100, subtype="PCM_16")
    sf.write(tmp_path / "float.wav", stereo, 44100, subtype="FLOAT")
    reference = asr.transcribe(speech.paths[0])[0]
    for transcript in asr.transcribe([tmp_path / "pcm16.wav", tmp_path / "float.wav"]):
        assert transcript.error is None and transcript.text == reference.text == TEXTS[0]
        assert _same_words(transcript.words, reference.words)
        assert transcript.duration == pytest.approx(2.0, abs=1e-4)


def test_arrays_are_transcribed_like_files(asr: Transcriber, speech: Speech) -> None:
    mono = speech.slots[1]
    stereo_44k = torchaudio.functional.resample(torch.from_numpy(mono), RATE, 44100).repeat(2, 1)
    int16 = np.round(mono * 32768).astype(np.int16)
    transcripts = asr.transcribe([mono, torch.from_numpy(mono)[None], int16])
    transcripts += asr.transcribe(stereo_44k, sample_rate=44100)
    assert [t.text for t in transcripts] == [TEXTS[1]] * 4
    assert [t.audio for t in transcripts] == ["<array 0>", "<array 1>", "<array 2>", "<array 0>"]
    (transposed,) = asr.transcribe(np.stack([mono, mono], axis=1))  # (samples, channels)
    assert "(channels, samples), got shape (32000, 2)" in transposed.error
    with pytest.raises(ValueError, match="sample_rate"):
        asr.transcribe(mono, sample_rate=0)


def test_ogg_and_mp3_are_read(asr: Transcriber, speech: Speech, tmp_path: Path) -> None:
    """Lossy codecs change the features, so the tiny model's words may change: only the reading is
    checked (format, length, that words come out)."""
    for suffix in ("ogg", "mp3"):
        sf.write(tmp_path / f"slot.{suffix}", speech.slots[0], RATE)
    for transcript in asr.transcribe([tmp_path / "slot.ogg", tmp_path / "slot.mp3"]):
        assert transcript.error is None and transcript.words
        assert transcript.duration == pytest.approx(2.0, abs=0.06)


def test_silence_gives_an_empty_transcript(asr: Transcriber) -> None:
    (transcript,) = asr.transcribe(np.zeros(RATE, dtype=np.float32))
    assert transcript.error is None and transcript.text == "" and transcript.words == []


def test_long_recording_is_stitched_without_lost_or_repeated_words(
    asr: Transcriber, speech: Speech, long_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = asr.transcribe(speech.paths)
    reads = []
    real_read = sf.SoundFile.read

    def recording_read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    (transcript,) = asr.transcribe(long_path)
    assert transcript.error is None
    assert transcript.text == " ".join(pieces[i].text for i in LONG_ORDER)
    expected = [
        Word(w.word, w.start + 2.0 * k, w.end + 2.0 * k)
        for k, i in enumerate(LONG_ORDER)
        for w in pieces[i].words
    ]
    assert _same_words(transcript.words, expected)
    assert len(reads) == len(LONG_ORDER) - 1  # one read per window, none of the whole file
    assert max(reads) == 4 * RATE


def test_imputer_with_one_step_is_ctc_greedy(asr: Transcriber, speech: Speech, long_path: Path) -> None:
    inputs = [*speech.paths, long_path]
    ctc = asr.transcribe(inputs, decoder="ctc")
    assert asr.transcribe(inputs, decoder="imputer", steps=1) == ctc
    assert all(t.error is None for t in asr.transcribe(inputs, decoder="imputer"))


def test_default_decoder_follows_how_the_model_was_trained(
    trained: tuple, tokenizer: Tokenizer, model_path: Path, speech: Speech, tmp_path: Path
) -> None:
    ctc = load_model(model_path)
    assert ctc.default_decoder == "ctc"
    assert ctc.transcribe(speech.paths) == ctc.transcribe(speech.paths, decoder="ctc")
    package_model(*trained, tokenizer, tmp_path / "imputer.pt", trained_as="imputer")
    imputer = load_model(tmp_path / "imputer.pt")
    assert imputer.default_decoder == "imputer" and imputer.block_size == 8
    by_default = imputer.transcribe(speech.paths)
    assert by_default == imputer.transcribe(speech.paths, decoder="imputer", steps=8)


@pytest.mark.parametrize(
    ("decoder", "steps", "message"),
    [("beam", None, "decoder"), ("imputer", 0, "steps"), ("imputer", 9, "steps"), ("ctc", 2, "imputer")],
)
def test_decoding_arguments_are_checked(
    asr: Transcriber, decoder: str, steps: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        asr.transcribe([], decoder=decoder, steps=steps)


@pytest.fixture(scope="module")
def lm_files(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(lexicon, ARPA) of a bigram LM of the three sentences."""
    from imputer_asr.lm.ngram import train_ngram, write_lexicon

    root = tmp_path_factory.mktemp("lm")
    lm = train_ngram([text.split() for text in TEXTS], order=2)
    lm.write_arpa(root / "lm.arpa")
    write_lexicon(lm.vocabulary, tokenizer, root / "lexicon.txt")
    return root / "lexicon.txt", root / "lm.arpa"


def test_lm_decoder_keeps_the_right_words_and_their_times(
    asr: Transcriber, model_path: Path, lm_files: tuple[Path, Path], speech: Speech, long_path: Path
) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    from imputer_asr.decoding.lm_search import LMWeights

    lexicon, arpa = lm_files
    with_lm = load_model(model_path, options=WINDOWS, lexicon=lexicon, arpa=arpa, lm_weights=LMWeights(0.5))
    assert with_lm.default_decoder == "lm"
    inputs = [*speech.paths, long_path]
    greedy = asr.transcribe(inputs, decoder="ctc")
    searched = with_lm.transcribe(inputs)
    assert [t.text for t in searched] == [t.text for t in greedy]  # the greedy words are right here
    for ours, theirs in zip(searched, greedy, strict=True):
        for a, b in zip(ours.words, theirs.words, strict=True):
            # Same first frame; a word ends on the first frame of its last piece, so maybe earlier.
            assert a.start == pytest.approx(b.start, abs=TIME_TOLERANCE)
            assert a.start < a.end <= b.end + TIME_TOLERANCE


def test_lm_decoder_needs_a_language_model(asr: Transcriber, model_path: Path, lm_files: tuple) -> None:
    with pytest.raises(ValueError, match="needs a language model"):
        asr.transcribe([], decoder="lm")
    with pytest.raises(ValueError, match="needs a lexicon"):
        load_model(model_path, arpa=lm_files[1])
    with pytest.raises(ValueError, match="lexicon .*missing.txt does not exist"):
        load_model(model_path, lexicon=lm_files[0].parent / "missing.txt")


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list:
    """The progress bars transcription makes, each with the arguments it was made with."""
    from imputer_asr.transcription import transcribe as module

    made = []

    class RecordingBar(module.tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.asked = kwargs
            made.append(self)

    monkeypatch.setattr(module, "tqdm", RecordingBar)
    return made


def test_progress_counts_the_seconds_of_audio_decoded(
    asr: Transcriber, speech: Speech, long_path: Path, bars: list, capsys: pytest.CaptureFixture
) -> None:
    missing = long_path.parent / "missing.wav"
    transcripts = asr.transcribe([*speech.paths, long_path, missing], progress=True)
    assert [t.error is None for t in transcripts] == [True] * 4 + [False]
    (bar,) = bars
    # Every window of every input that could be read: three 2 s slots, and the long recording's.
    windows = plan_windows(len(LONG_ORDER) * SLOT, RATE, WINDOWS.window_seconds, WINDOWS.overlap_seconds)
    seconds = 3 * 2.0 + sum((stop - start) / RATE for start, stop in windows)
    assert len(windows) > 1 and bar.total == pytest.approx(seconds) and bar.n == pytest.approx(seconds)
    assert "transcribe" in capsys.readouterr().err
    asr.transcribe(speech.paths[0])  # quiet by default
    assert bars[1].disable and capsys.readouterr().err == ""


def test_import_is_cheap_and_load_model_is_exported() -> None:
    import imputer_asr

    assert imputer_asr.load_model is load_model and "load_model" in imputer_asr.__all__
    code = "import sys, imputer_asr; print(sorted({'torch', 'lhotse'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the command line ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _transcribe(capsys: pytest.CaptureFixture, model: Path, *args: str) -> tuple[int, list[str], list[str]]:
    """Run ``imputer-asr transcribe`` in-process (4 s windows, printing to stdout unless the call
    names an --output-dir): exit status, stdout, stderr lines."""
    windows = ["--window-seconds", "4", "--overlap-seconds", "2"]
    if "--output-dir" not in args:
        windows += ["--output-dir", "-"]
    status = main(["transcribe", "--model", str(model), "--threads", "1", *windows, *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def _bad_input(case: str, path: Path, speech: Speech) -> Path:
    """Write the bad input ``case`` at ``path`` (whose suffix may change); returns its path."""
    if case == "missing":
        pass
    elif case == "zero-byte":
        path.write_bytes(b"")
    elif case == "not-audio":
        path.write_text("this is a text file, not audio\n" * 20)
    elif case == "truncated-header":
        sf.write(path, speech.slots[0], RATE, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:30])
    elif case == "zero-samples":
        sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    elif case in ("nan", "inf"):
        samples = speech.slots[0].copy()
        samples[RATE // 2] = np.nan if case == "nan" else np.inf
        sf.write(path, samples, RATE, subtype="FLOAT")
    elif case == "too-short":
        sf.write(path, speech.slots[0][RATE // 2 : RATE // 2 + 480], RATE)  # 30 ms
    elif case == "corrupt-data":
        path = path.with_suffix(".flac")
        sf.write(path, speech.slots[0], RATE)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "empty-directory":
        path = path.with_suffix("")
        path.mkdir()
    else:
        raise AssertionError(case)
    return path


BAD_INPUTS = {
    "missing": "no such file",
    "zero-byte": "empty file",
    "not-audio": "not an audio file",
    "truncated-header": "not an audio file",
    "zero-samples": "no audio samples",
    "nan": "NaN or infinite",
    "inf": "NaN or infinite",
    "too-short": "too short",
    "corrupt-data": "truncated or corrupt",
    "empty-directory": "no audio files",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_the_rest_is_transcribed(
    case: str, model_path: Path, speech: Speech, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _bad_input(case, tmp_path / "bad.wav", speech)
    good = str(speech.paths[0])
    status, out, err = _transcribe(capsys, model_path, "--format", "json", good, str(bad))
    assert status == 1
    records = [json.loads(line) for line in out]
    assert [r["audio"] for r in records] == [good, str(bad)]
    assert records[0]["text"] == TEXTS[0] and "error" not in records[0]
    assert records[1]["text"] == "" and records[1]["words"] == []
    assert str(bad) in records[1]["error"] and BAD_INPUTS[case] in records[1]["error"]
    assert len(err) == 1 and str(bad) in err[0] and BAD_INPUTS[case] in err[0]
    assert "Traceback" not in err[0]


def test_txt_lists_the_transcribed_files(
    model_path: Path, speech: Speech, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(speech.paths[1], tmp_path / "sub" / "b.flac")
    shutil.copy(speech.paths[0], tmp_path / "a.flac")
    status, out, err = _transcribe(capsys, model_path, str(tmp_path))
    assert status == 0 and err == []
    assert out == [f"{tmp_path / 'a.flac'}\t{TEXTS[0]}", f"{tmp_path / 'sub' / 'b.flac'}\t{TEXTS[1]}"]
    status, out, err = _transcribe(
        capsys, model_path, str(tmp_path / "a.flac"), str(tmp_path / "nothing.wav")
    )
    assert status == 1 and out == [f"{tmp_path / 'a.flac'}\t{TEXTS[0]}"] and len(err) == 1


def test_json_words_are_timed_in_order(
    model_path: Path, long_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = _transcribe(capsys, model_path, "--format", "json", "--decoder", "ctc", str(long_path))
    assert status == 0 and err == [] and len(out) == 1
    record = json.loads(out[0])
    assert set(record) == {"audio", "text", "duration", "words"}
    assert record["audio"] == str(long_path) and record["duration"] == pytest.approx(14.0)
    assert " ".join(w["word"] for w in record["words"]) == record["text"]
    times = [t for w in record["words"] for t in (w["start"], w["end"])]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= record["duration"]


_SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
_VTT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


def _cue_seconds(match: re.Match) -> tuple[float, float]:
    h, m, s, ms, h2, m2, s2, ms2 = (int(g) for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000


def _parse_cues(blocks: list[str], pattern: re.Pattern, numbered: bool) -> list[tuple[float, float, str]]:
    cues = []
    for index, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if numbered:
            assert lines.pop(0) == str(index)
        match = pattern.match(lines[0])
        assert match, lines[0]
        cues.append((*_cue_seconds(match), " ".join(lines[1:])))
    return cues


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_files_parse_back(
    fmt: str, model_path: Path, long_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_dir = tmp_path / "subs"
    status, out, err = _transcribe(
        capsys, model_path, "--format", fmt, "--output-dir", str(out_dir), str(long_path)
    )
    written = out_dir / f"long.{fmt}"
    assert status == 0 and err == [] and out == [f"{long_path}\t{written}"]
    text = written.read_text()
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n")
        text = text[len("WEBVTT\n\n") :]
    cues = _parse_cues(text.strip("\n").split("\n\n"), _SRT_TIME if fmt == "srt" else _VTT_TIME, fmt == "srt")
    assert len(cues) >= 3
    times = [t for start, end, _ in cues for t in (start, end)]
    assert times == sorted(times) and all(start < end for start, end, _ in cues)
    assert " ".join(c[2] for c in cues) == " ".join(TEXTS[i] for i in LONG_ORDER)
    assert all(len(c[2].split()) <= 12 and c[1] - c[0] <= 7.0 for c in cues)


def test_output_format_all_writes_every_format_that_agree_with_each_other(
    model_path: Path, long_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_dir = tmp_path / "out"
    args = ["--output-format", "all", "--output-dir", str(out_dir), "--decoder", "ctc", str(long_path)]
    status, out, err = _transcribe(capsys, model_path, *args)
    files = {fmt: out_dir / f"long.{fmt}" for fmt in ("txt", "json", "tsv", "srt", "vtt")}
    assert status == 0 and err == [] and out == [f"{long_path}\t{f}" for f in files.values()]
    record = json.loads(files["json"].read_text())
    assert files["txt"].read_text() == record["text"] + "\n"
    header, *rows = files["tsv"].read_text().splitlines()
    assert header == "start\tend\tword"
    assert [r.split("\t")[2] for r in rows] == [w["word"] for w in record["words"]]
    assert [int(r.split("\t")[0]) for r in rows] == [round(w["start"] * 1000) for w in record["words"]]
    for fmt in ("srt", "vtt"):
        assert record["words"][0]["word"] in files[fmt].read_text()
    assert not list(out_dir.glob(".*.tmp"))
    # Subtitles cannot go to stdout.
    status, out, err = _transcribe(
        capsys, model_path, "--output-format", "srt", "--output-dir", "-", str(long_path)
    )
    assert status == 2 and out == [] and "writes files" in err[0]


def test_a_file_per_input_per_format_stdout_lists_them_and_the_bar_is_for_terminals(
    model_path: Path, speech: Speech, tmp_path: Path, bars: list, capsys: pytest.CaptureFixture
) -> None:
    out_dir = tmp_path / "out"
    inputs = [str(p) for p in speech.paths]
    status, out, err = _transcribe(
        capsys, model_path, "--output-format", "all", "--output-dir", str(out_dir), *inputs
    )
    assert status == 0 and err == []  # stderr is not a terminal here: no bar
    assert [bar.asked["disable"] for bar in bars] == [None]  # tqdm's "only on a terminal"
    files = [out_dir / f"{Path(audio).stem}.{fmt}" for audio in inputs for fmt in TRANSCRIPT_FORMATS]
    assert out == [f"{audio}\t{file}" for audio in inputs for file in files if file.stem == Path(audio).stem]
    assert sorted(out_dir.iterdir()) == sorted(files)
    for audio, text in zip(inputs, TEXTS, strict=True):
        assert (out_dir / f"{Path(audio).stem}.txt").read_text() == text + "\n"
        assert json.loads((out_dir / f"{Path(audio).stem}.json").read_text())["text"] == text


def test_tsv_to_stdout_names_the_input_on_every_row(
    model_path: Path, speech: Speech, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = _transcribe(capsys, model_path, "--output-format", "tsv", str(speech.paths[0]))
    assert status == 0 and err == []
    assert [row.split("\t")[3] for row in out] == TEXTS[0].split()
    assert all(row.split("\t")[0] == str(speech.paths[0]) for row in out)


def test_subtitles_of_two_inputs_with_one_name_are_not_overwritten(
    model_path: Path, speech: Speech, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for part, slot in (("a", 0), ("b", 1)):
        (tmp_path / part).mkdir()
        shutil.copy(speech.paths[slot], tmp_path / part / "same.flac")
    args = ["--format", "srt", "--output-dir", str(tmp_path / "out")]
    status, out, err = _transcribe(capsys, model_path, *args, str(tmp_path / "a"), str(tmp_path / "b"))
    assert status == 1 and len(out) == 1 and len(err) == 1 and "would overwrite" in err[0]
    assert "CAT" in (tmp_path / "out" / "same.srt").read_text()


def _bad_model(case: str, path: Path, trained: tuple, tokenizer: Tokenizer) -> None:
    weights, cfg = trained
    if case == "corrupt":
        path.write_bytes(os.urandom(4096))
    elif case == "training-checkpoint":
        torch_save_atomic(
            {"model": weights, "optimizer": {}, "config": config_to_dict(cfg), "trained_as": "ctc"}, path
        )
    elif case == "random-pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0], "note": "not a model"}))
    elif case == "tokenizer":
        path.write_bytes(tokenizer.model_proto)
    elif case != "missing":
        raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "corrupt", "training-checkpoint", "random-pickle", "tokenizer"])
def test_bad_model_is_a_usage_error(
    case: str,
    trained: tuple,
    tokenizer: Tokenizer,
    speech: Speech,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    model = tmp_path / "epoch-3.pt"
    _bad_model(case, model, trained, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        status, out, err = _transcribe(capsys, model, str(speech.paths[0]))
    assert status == 2 and out == []
    assert len(err) == 1 and str(model) in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--steps", "0", "--decoder", "imputer"], "steps"), (["--steps", "2"], "imputer decoder only")],
)
def test_bad_decoding_options_are_usage_errors(
    args: list[str], message: str, model_path: Path, speech: Speech, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = _transcribe(capsys, model_path, *args, str(speech.paths[0]))
    assert status == 2 and out == [] and len(err) == 1 and message in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", "--model", str(model_path), "--format", "docx", str(speech.paths[0])])
    assert exit_info.value.code == 2


def test_command_transcribes_with_the_lm(
    model_path: Path, lm_files: tuple[Path, Path], speech: Speech, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    lexicon, arpa = (str(p) for p in lm_files)
    args = ["--lexicon", lexicon, "--arpa", arpa, "--lm-weight", "0.5", *(str(p) for p in speech.paths)]
    status, out, err = _transcribe(capsys, model_path, *args)
    assert status == 0 and err == []
    assert out == [f"{path}\t{text}" for path, text in zip(speech.paths, TEXTS, strict=True)]
    status, out, err = _transcribe(capsys, model_path, "--arpa", arpa, str(speech.paths[0]))
    assert status == 2 and out == [] and "needs a lexicon" in err[0]


def test_command_prints_no_traceback_for_a_bad_file(model_path: Path, speech: Speech, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    command = [sys.executable, "-m", "imputer_asr.cli", "transcribe", "--model", str(model_path)]
    command += ["--threads", "1", str(speech.paths[2]), str(bad)]
    run = tmp_path / "run"
    run.mkdir()
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120, cwd=run)
    assert result.returncode == 1
    # By default a <name>.txt per input in the working directory, each named on stdout.
    written = f"{Path(speech.paths[2]).stem}.txt"
    assert result.stdout == f"{speech.paths[2]}\t{written}\n"
    assert sorted(p.name for p in run.iterdir()) == [written]
    assert (run / written).read_text() == TEXTS[2] + "\n"
    cause = "not an audio file that soundfile can read (Format not recognised)"
    assert result.stderr.splitlines() == [f"imputer-asr transcribe: error: {bad}: {cause}"]


# --- packaging records how the model was trained ---------------------------------------------------


@pytest.mark.parametrize("trained_as", ["imputer", None])
def test_package_records_how_the_model_was_trained(
    trained_as: str | None, trained: tuple, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    weights, cfg = trained
    checkpoint = {"model": weights, "optimizer": {}, "config": config_to_dict(cfg)}
    if trained_as is not None:
        checkpoint["trained_as"] = trained_as
    torch_save_atomic(checkpoint, tmp_path / "exp" / "epoch-1.pt")
    bpe = tmp_path / "bpe.model"
    bpe.write_bytes(tokenizer.model_proto)
    out = tmp_path / "model.pt"
    assert main(["package", "--exp-dir", str(tmp_path / "exp"), "--bpe", str(bpe), "--out", str(out)]) == 0
    assert load_packaged(out).info["trained_as"] == (trained_as or "ctc")


# --- bfloat16 inference ------------------------------------------------------------------------------


def test_bf16_transcribes_what_float32_transcribes(model_path, asr, speech, long_path, capsys):
    """``--bf16`` runs the network under bfloat16 autocast where the CPU has it (else float32, with a
    warning); the overfitted model still reads every slot and the long recording right, and K-step
    decoding gives nearly what it gives in float32. Not exactly: this CTC model was not trained to
    read alignments, its K-step outputs sit near ties (float32 already misreads a slot), and
    bfloat16 rounds differently with and without AMX (the AMD EPYC here flipped 2 of 52 characters)."""
    from imputer_asr.model.precision import Bf16Inference, native_bf16

    fast = load_model(model_path, options=WINDOWS, bf16=True)
    assert isinstance(fast.model, Bf16Inference) == native_bf16(torch.device("cpu"))
    texts = [t.text for t in fast.transcribe([*speech.paths, long_path])]
    assert texts == [*TEXTS, " ".join(TEXTS[i] for i in LONG_ORDER)]
    imputer_texts = [t.text for t in fast.transcribe(speech.paths, decoder="imputer", steps=4)]
    float32_texts = [t.text for t in asr.transcribe(speech.paths, decoder="imputer", steps=4)]
    assert jiwer.cer(" ".join(float32_texts), " ".join(imputer_texts)) <= 0.1
    status, out, _ = _transcribe(capsys, model_path, "--bf16", str(speech.paths[1]))
    assert status == 0 and out == [f"{speech.paths[1]}\t{TEXTS[1]}"]


def test_bf16_falls_back_to_float32_without_hardware_and_refuses_an_onnx_export(
    model_path, speech, monkeypatch, caplog
):
    from imputer_asr.model.precision import bf16_inference

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    slow = load_model(model_path, options=WINDOWS, bf16=True)
    assert isinstance(slow.model, ImputerModel)
    assert "decoding in float32" in caplog.text
    assert slow.transcribe(speech.paths[0])[0].text == TEXTS[0]
    with pytest.raises(ValueError, match="ONNX export runs in its own precision"):
        bf16_inference(torch.nn.Linear(2, 2), torch.device("cpu"))

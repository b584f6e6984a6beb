"""The pocketsphinx peer: its words in the references' convention, the PCM it is given, a sentence
spoken by espeak-ng recognised through the library and the command line, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from pocketsphinx import Decoder

from imputer_asr.cli import main
from imputer_asr.evaluation.peer import (
    cut_pcm16,
    decode_pocketsphinx,
    normalize_pocketsphinx,
    recognize_pcm16,
)
from imputer_asr.evaluation.scoring import score_utterance

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed")

SENTENCE = "ONE TWO THREE FOUR FIVE"
# Measured with espeak-ng 1.51's en-us voice and pocketsphinx 5.1.1: "WELL TWO THREE FOUR FIVE", WER 0.2
# (the +m1 variant the same, +f2 0.0). A pipeline that hands pocketsphinx anything but its audio as
# 16-bit little-endian PCM at 16 kHz makes it find no word of the sentence: byte-swapped, float32 or
# unscaled samples, white noise, and 22.05 kHz samples read as 16 kHz all scored WER 1.0 to 1.2. The
# bound leaves one word more than measured for another espeak-ng version's rendering.
MAX_WER = 0.4


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hello world", "HELLO WORLD"),
        ("<s> hello <sil> world </s>", "HELLO WORLD"),
        ("[NOISE] read(2) the(3) book [SPEECH]", "READ THE BOOK"),
        ("++UH++ it's o'clock", "IT'S O'CLOCK"),
        ("x-ray a.m. u.s.", "X RAY A M U S"),
        ("'tis the dogs'", "TIS THE DOGS"),
        ("  <sil>  [NOISE] ", ""),
        ("", ""),
    ],
)
def test_normalize_pocketsphinx_keeps_words_upper_cased_without_fillers_or_pronunciation_marks(text, words):
    assert normalize_pocketsphinx(text) == words


def _tone_cut(tmp_path: Path, sampling_rate: int, channels: int = 1) -> MonoCut:
    t = np.arange(sampling_rate // 2) / sampling_rate
    tone = np.rint(12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    wav = tmp_path / f"tone-{sampling_rate}-{channels}.wav"
    sf.write(wav, np.stack([tone] * channels, axis=1), sampling_rate, subtype="PCM_16")
    return Recording.from_file(wav, recording_id="tone").to_cut()


def test_cut_pcm16_is_the_files_16_bit_samples_exactly_and_16_khz(tmp_path):
    cut = _tone_cut(tmp_path, 16000)
    written = sf.read(cut.recording.sources[0].source, dtype="int16")[0]
    assert cut_pcm16(cut) == written.astype("<i2").tobytes()
    assert len(cut_pcm16(_tone_cut(tmp_path, 8000))) == 2 * 8000  # 0.5 s at 16 kHz, 2 bytes a sample


def test_cut_pcm16_refuses_what_pocketsphinx_cannot_read_naming_the_cut(tmp_path):
    with pytest.raises(ValueError, match="cut no-audio has no recording"):
        cut_pcm16(MonoCut("no-audio", 0.0, 1.0, 0))
    with pytest.raises(ValueError, match="pocketsphinx reads one channel, the cut has 2"):
        cut_pcm16(_tone_cut(tmp_path, 16000, channels=2))
    gone = _tone_cut(tmp_path, 16000)
    Path(gone.recording.sources[0].source).unlink()
    with pytest.raises(ValueError, match=r"cut tone: Reading audio from '.*tone-16000-1.wav' failed"):
        cut_pcm16(gone)


def _spoken_cut(tmp_path: Path, text: str) -> MonoCut:
    """espeak-ng's en-us voice reading ``text`` (22.05 kHz: decoding resamples it), transcribed."""
    cut_id = "spoken"
    wav = tmp_path / f"{cut_id}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text.lower()], check=True)
    recording = Recording.from_file(wav, recording_id=cut_id)
    cut = recording.to_cut()
    cut.supervisions = [SupervisionSegment(cut_id, cut_id, 0.0, recording.duration, text=text)]
    return cut


@needs_espeak
def test_pocketsphinx_recognises_a_spoken_sentence_and_not_the_same_audio_misread(tmp_path):
    cut = _spoken_cut(tmp_path, SENTENCE)
    (hyp,), seconds = decode_pocketsphinx(CutSet.from_cuts([cut]))
    assert (hyp.cut_id, hyp.ref, hyp.duration) == ("spoken", SENTENCE, cut.duration) and seconds > 0
    assert score_utterance("spoken", SENTENCE, hyp.hyp).word_stats.rate <= MAX_WER, hyp.hyp

    samples = cut.resample(16000).load_audio()[0]
    pcm = np.frombuffer(cut_pcm16(cut), dtype="<i2")
    misread = {
        "byte-swapped": pcm.astype(">i2").tobytes(),
        "float32": samples.astype("<f4").tobytes(),
        "white noise": np.random.default_rng(0).integers(-32768, 32767, pcm.size, dtype="<i2").tobytes(),
    }
    decoder = Decoder(loglevel="FATAL")
    for what, data in misread.items():
        words = normalize_pocketsphinx(recognize_pcm16(decoder, data))
        assert score_utterance("spoken", SENTENCE, words).word_stats.rate > MAX_WER, (what, words)


@needs_espeak
def test_a_cuts_hypothesis_does_not_depend_on_what_was_decoded_before(tmp_path):
    # Without resetting the front end, loud noise decoded first changed this sentence's
    # hypothesis ("oh for real" from a new decoder, "oh and or read" after the noise).
    pcm = cut_pcm16(_spoken_cut(tmp_path, "OPEN THE DOOR PLEASE"))
    alone = recognize_pcm16(Decoder(loglevel="FATAL"), pcm)
    decoder = Decoder(loglevel="FATAL")
    recognize_pcm16(decoder, np.random.default_rng(0).integers(-32768, 32767, 40000, dtype="<i2").tobytes())
    assert recognize_pcm16(decoder, pcm) == alone


@needs_espeak
def test_peer_command_writes_hyps_and_timing_that_score_reads(tmp_path):
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([_spoken_cut(tmp_path, SENTENCE)]).to_file(cuts)
    out = tmp_path / "exp"
    assert main(["peer-pocketsphinx", "--cuts", str(cuts), "--out-dir", str(out), "--name", "ps"]) == 0
    (row,) = [json.loads(line) for line in (out / "hyps-ps.jsonl").read_text().splitlines()]
    assert sorted(row) == ["cut_id", "duration", "hyp", "ref"] and row["ref"] == SENTENCE
    timing = json.loads((out / "timing-ps.json").read_text())
    assert timing["utterances"] == 1 and timing["threads"] == 1
    assert timing["rtf"] == pytest.approx(timing["decode_seconds"] / timing["audio_seconds"])
    assert main(["score", "--hyps", str(out / "hyps-ps.jsonl"), "--out-dir", str(out), "--name", "ps"]) == 0
    assert json.loads((out / "wer-ps.json").read_text())["wer"] <= MAX_WER


def test_peer_command_reports_bad_input_on_one_line_naming_the_file(tmp_path, capsys):
    argv = ["peer-pocketsphinx", "--out-dir", str(tmp_path / "exp"), "--name", "ps", "--cuts"]
    missing = tmp_path / "missing.jsonl.gz"
    assert main([*argv, str(missing)]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"imputer-asr peer-pocketsphinx: error: {missing}: no such cuts manifest; "
        "run the stage that writes it first\n"
    )
    features_only = tmp_path / "features.jsonl.gz"
    CutSet.from_cuts([MonoCut("no-audio", 0.0, 1.0, 0)]).to_file(features_only)
    assert main([*argv, str(features_only)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"imputer-asr peer-pocketsphinx: error: {features_only}: cut no-audio has no recording"
    )
    assert err.count("\n") == 1 and not (tmp_path / "exp").exists()

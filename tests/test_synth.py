"""Tests of the synthetic corpus: number reading, sentence normalisation, voices and a tiny render."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from imputer_asr.data.synth import (
    Prompt,
    Speaker,
    list_timbres,
    load_sentences,
    make_prompt,
    normalize_sentence,
    number_to_words,
    ordinal_to_words,
    render_corpus,
    sample_speakers,
    synthesize,
)
from imputer_asr.data.synth import render as render_module
from imputer_asr.data.synth import voices as voices_module
from imputer_asr.data.synth.plan import cached_prompts, plan_corpus
from imputer_asr.data.synth.text import FORTUNE_DIR
from imputer_asr.data.synth.voices import INSTALL_HINT, Timbre

HAVE_TOOLS = not voices_module.missing_tools()
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason=INSTALL_HINT)
HAVE_ACCENTED = HAVE_TOOLS and any(t.engine == "accented" for t in list_timbres())
needs_accented = pytest.mark.skipif(
    not HAVE_ACCENTED, reason=f"apt-get install -y {voices_module.ACCENTED_PACKAGES}"
)
needs_fortunes = pytest.mark.skipif(not FORTUNE_DIR.is_dir(), reason="apt-get install -y fortunes")

PARTS = ("dev", "test", "train")
TINY_UTTS = {"train": 4, "dev": 4, "test": 4}
TINY_SPEAKERS = {"train": 2, "dev": 2, "test": 2}
TRANSCRIPT_RE = re.compile(r"^[A-Z']+( [A-Z']+)*$")


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "ZERO"),
        (7, "SEVEN"),
        (13, "THIRTEEN"),
        (21, "TWENTY ONE"),
        (40, "FORTY"),
        (100, "ONE HUNDRED"),
        (115, "ONE HUNDRED FIFTEEN"),
        (999, "NINE HUNDRED NINETY NINE"),
        (1000, "ONE THOUSAND"),
        (1984, "ONE THOUSAND NINE HUNDRED EIGHTY FOUR"),
        (2026, "TWO THOUSAND TWENTY SIX"),
        (40_000, "FORTY THOUSAND"),
        (1_000_001, "ONE MILLION ONE"),
        (2_500_000_000, "TWO BILLION FIVE HUNDRED MILLION"),
    ],
)
def test_number_to_words_cardinal(n: int, words: str) -> None:
    assert number_to_words(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1984, "NINETEEN EIGHTY FOUR"),
        (2026, "TWENTY TWENTY SIX"),
        (1900, "NINETEEN HUNDRED"),
        (1905, "NINETEEN O FIVE"),
        (2000, "TWO THOUSAND"),
        (2009, "TWO THOUSAND NINE"),
        (2010, "TWENTY TEN"),
        (1066, "TEN SIXTY SIX"),
    ],
)
def test_number_to_words_year(n: int, words: str) -> None:
    assert number_to_words(n, year=True) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (1, "FIRST"),
        (2, "SECOND"),
        (3, "THIRD"),
        (4, "FOURTH"),
        (5, "FIFTH"),
        (8, "EIGHTH"),
        (9, "NINTH"),
        (12, "TWELFTH"),
        (20, "TWENTIETH"),
        (21, "TWENTY FIRST"),
        (100, "ONE HUNDREDTH"),
        (112, "ONE HUNDRED TWELFTH"),
    ],
)
def test_ordinal_to_words(n: int, words: str) -> None:
    assert ordinal_to_words(n) == words


def test_number_to_words_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError):
        number_to_words(-1)
    with pytest.raises(ValueError):
        number_to_words(123, year=True)
    with pytest.raises(TypeError):
        number_to_words(1.5)  # type: ignore[arg-type]


# --- sentences ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "transcript"),
    [
        ("Hello, world -- it's a fine day!", "HELLO WORLD IT'S A FINE DAY"),
        (
            "In 1984, he bought 3 cats for his 2nd wife.",
            "IN NINETEEN EIGHTY FOUR HE BOUGHT THREE CATS FOR HIS SECOND WIFE",
        ),
        ("\"'Tis the season,\" said Mr. O'Brien.", "TIS THE SEASON SAID MISTER O'BRIEN"),
        (
            "The 1960s were 50% fun and 2.5 times louder.",
            "THE NINETEEN SIXTIES WERE FIFTY PERCENT FUN AND TWO POINT FIVE TIMES LOUDER",
        ),
        ("A long-forgotten caf\u00e9 in Z\u00fcrich.", "A LONG FORGOTTEN CAFE IN ZURICH"),
        ("It cost 1,250 pounds (ouch).", "IT COST ONE THOUSAND TWO HUNDRED FIFTY POUNDS OUCH"),
        ("Go away right now.", "GO AWAY RIGHT NOW"),
        (" ".join(["word"] * 30), " ".join(["WORD"] * 30)),
    ],
)
def test_normalize_sentence(sentence: str, transcript: str) -> None:
    assert normalize_sentence(sentence) == transcript


@pytest.mark.parametrize(
    "sentence",
    [
        "Visit http://www.debian.org for more.",
        "Mail me at joe@example.com today please.",
        "A cup of coffee is $5 these days.",
        "for (i = 0; i < n; i++) do this",
        "IBM makes very large computers today.",
        "Hmm, that is a very odd thing.",
        "The word is \u65e5\u672c in Japanese text.",
        "THIS IS ALL SHOUTING IN CAPS.",
        "The deadline is 10-12 weeks away.",
        "Go away now.",
        " ".join(["word"] * 31),
    ],
)
def test_normalize_sentence_drops_unreadable(sentence: str) -> None:
    assert normalize_sentence(sentence) is None


def test_spoken_form_keeps_prosody_and_matches_transcript() -> None:
    prompt = make_prompt('"Why not?" she asked -- in 2026.')
    assert prompt is not None
    assert prompt.spoken == "why not? she asked, in twenty twenty six."
    assert prompt.text == "WHY NOT SHE ASKED IN TWENTY TWENTY SIX"


def test_load_sentences_from_a_fortune_dir(tmp_path: Path) -> None:
    (tmp_path / "alpha").write_text(
        "The first fortune is here.  And a second one follows it!\n"
        "\t\t-- Some Author, 1999\n"
        "%\n"
        "Ascii art follows below it.\n"
        "  /\\_/\\  (o.o)  \n"
        "%\n"
        "This word is _\bb_\bo_\bl_\bd in print.\n"
        "%\n"
        "The first fortune is here.\n"
    )
    (tmp_path / "beta").write_text("Paragraph one has words.\n\nParagraph two has 2 words.\n")
    (tmp_path / "beta.dat").write_bytes(b"\x00\x01binary")
    (tmp_path / "beta.u8").write_text("Never read this file please.\n")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "gamma").write_text("Never read this one either.\n")
    assert load_sentences(tmp_path) == [
        "THE FIRST FORTUNE IS HERE",
        "AND A SECOND ONE FOLLOWS IT",
        "THIS WORD IS BOLD IN PRINT",
        "PARAGRAPH ONE HAS WORDS",
        "PARAGRAPH TWO HAS TWO WORDS",
    ]


@needs_fortunes
def test_fortune_sentences_are_clean_and_distinct() -> None:
    texts = [prompt.text for prompt in cached_prompts()]
    assert len(texts) > 10_000
    assert len(set(texts)) == len(texts)
    assert all(TRANSCRIPT_RE.match(text) for text in texts)
    assert all(4 <= len(text.split()) <= 30 for text in texts)


# --- voices -------------------------------------------------------------------------------------


def test_speaker_commands() -> None:
    espeak = Speaker(101, "espeak-ng", "en-gb-scotland", "m3", 150, 60)
    assert espeak.command("hi there.", Path("a.wav")) == [
        "espeak-ng", "-v", "en-gb-scotland+m3", "-s", "150", "-p", "60", "-w", "a.wav", "--", "hi there.",
    ]  # fmt: skip
    assert espeak.sox_effects() == []
    flite = Speaker(102, "flite", "slt", None, 1.25, 180)
    assert flite.command("hi.", Path("b.wav")) == [
        "flite", "-voice", "slt", "--setf", "duration_stretch=0.8000",
        "--setf", "int_f0_target_mean=180", "-t", "hi.", "-o", "b.wav",
    ]  # fmt: skip
    assert Speaker(103, "flite", "rms", None, 1.0, 200).sox_effects() == ["pitch", "1200"]
    festival = Speaker(104, "festival", "kal_diphone", None, 1.1, -250)
    assert festival.command("hi.", Path("c.wav")) == [
        "text2wave",
        "-eval",
        "(voice_kal_diphone)",
        "-o",
        "c.wav",
    ]
    assert festival.stdin("hi.") == b"hi." and espeak.stdin("hi.") is None
    assert festival.sox_effects() == ["tempo", "-s", "1.1", "pitch", "-250"]
    assert Speaker(105, "festival", "ked_diphone", None, 1, 0).sox_effects() == []
    accented = Speaker(106, "accented", "czech_dita", None, 1.25, 1200)
    command = accented.command('say "hi" \\ there.', Path("d.wav"))
    assert command[:3] == ["festival", "--batch", str(voices_module.ACCENTED_SCHEME)]
    # the Czech phones; the F0 an octave above the voice's register (1.8 x 2); durations / 1.25
    say = '(accented_say "say  hi    there." "czech_dita" accented_czech 3.6000 0.8000 "d.wav")'
    assert command[3:] == [say]
    assert accented.stdin("hi.") is None and accented.sox_effects() == []
    with pytest.raises(ValueError, match="unknown engine"):
        Speaker(104, "pico", "x", None, 1, 1).command("hi.", Path("c.wav"))


def test_missing_tools_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(voices_module.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match=re.escape(INSTALL_HINT)):
        voices_module.require_tools()
    with pytest.raises(RuntimeError, match="missing espeak-ng flite text2wave festival sox"):
        render_corpus(tmp_path / "corpus", TINY_UTTS, TINY_SPEAKERS)


@needs_tools
def test_sample_speakers_share_engines_by_weight_and_are_distinct() -> None:
    timbres = list_timbres()
    assert {t.engine for t in timbres} >= {"espeak-ng", "festival", "flite"}
    assert not any(t.voice.startswith("mb-") or "mbrola" in t.voice or t.voice == "awb_time" for t in timbres)
    speakers = sample_speakers(50, seed=3)
    assert speakers == sample_speakers(50, seed=3)
    assert speakers != sample_speakers(50, seed=4)
    assert [s.speaker_id for s in speakers] == list(range(100, 150))
    # the default engines, weights 2:1:1 of 50 speakers: 25, 12.5, 12.5 -> 25, 13, 12 (largest
    # remainders, ties by name)
    counts = Counter(s.engine for s in speakers)
    assert counts == {"espeak-ng": 25, "festival": 13, "flite": 12}
    for engine, count in counts.items():
        voices = Counter(s.timbre for s in speakers if s.engine == engine)
        available = sum(t.engine == engine for t in timbres)
        assert max(voices.values()) - min(voices.values()) <= 1  # every timbre once before any twice
        assert len(voices) == min(count, available)
    more = sample_speakers(len(timbres) + 5, seed=0)
    assert len({(s.timbre, s.rate, s.pitch) for s in more}) == len(more)


@needs_accented
def test_the_accented_engine_is_drawn_only_when_asked_for() -> None:
    speakers = sample_speakers(52, seed=3, engines=voices_module.ENGINES)
    # weights 1:2:1:1 of 52: 10.4, 20.8, 10.4, 10.4 -> the 2 left over to the largest remainders
    assert Counter(s.engine for s in speakers) == {
        "accented": 11,
        "espeak-ng": 21,
        "festival": 10,
        "flite": 10,
    }
    accented = {s.voice for s in speakers if s.engine == "accented"}
    assert accented == set(voices_module.ACCENTED_VOICES)  # all 8 voices before any comes twice
    assert sample_speakers(50, seed=3) == sample_speakers(50, seed=3, engines=voices_module.DEFAULT_ENGINES)


def test_the_accented_engine_without_its_voices_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voices_module, "list_timbres", lambda: (Timbre("flite", "kal"),))
    with pytest.raises(RuntimeError, match="apt-get install -y festvox-italp16k"):
        sample_speakers(3, seed=0, engines=["accented", "flite"])
    with pytest.raises(RuntimeError, match="no accented voice"):
        sample_speakers(3, seed=0, engines=["accented"])


@needs_tools
def test_engines_restrict_the_draw() -> None:
    heard = ["espeak-ng", "flite"]
    speakers = sample_speakers(40, seed=2, engines=heard)
    assert Counter(s.engine for s in speakers) == {"espeak-ng": 27, "flite": 13}  # 2:1 of 40
    assert {s.engine for s in sample_speakers(5, seed=2, engines=["festival"])} == {"festival"}
    with pytest.raises(ValueError, match="unknown engine.*pico"):
        sample_speakers(3, seed=0, engines=["pico"])


@needs_tools
@needs_fortunes
def test_a_heldout_engine_part_leaves_the_other_parts_unchanged() -> None:
    heard = {p: ["espeak-ng", "flite"] for p in PARTS}
    sizes = {"train": 30, "dev": 6, "test": 6}
    voices = {"train": 6, "dev": 2, "test": 2}
    base = plan_corpus(sizes, voices, seed=1, engines=heard)
    plan = plan_corpus(
        {**sizes, "dev-festival": 6},
        {**voices, "dev-festival": 3},
        seed=1,
        engines={**heard, "dev-festival": ["festival"]},
    )
    assert [u for u in plan if u.part != "dev-festival"] == base
    heldout = [u for u in plan if u.part == "dev-festival"]
    assert len(heldout) == 6 and {u.speaker.engine for u in heldout} == {"festival"}
    assert not {u.prompt for u in heldout} & {u.prompt for u in base}
    assert not {u.speaker.speaker_id for u in heldout} & {u.speaker.speaker_id for u in base}
    with pytest.raises(ValueError, match="share flite"):
        plan_corpus(
            sizes, voices, engines={"train": ["flite"], "dev": ["flite", "festival"], "test": ["flite"]}
        )
    with pytest.raises(ValueError, match="every part must"):
        plan_corpus(sizes, voices, engines={"dev": ["festival"]})


@needs_tools
@pytest.mark.parametrize(
    "speaker",
    [
        Speaker(1, "espeak-ng", "en-us", None, 170, 50),
        Speaker(2, "espeak-ng", "en-029", "klatt4", 200, 30),
        Speaker(3, "flite", "kal", None, 1.1, 120),
        Speaker(4, "flite", "rms", None, 0.9, 130),
        Speaker(5, "festival", "kal_diphone", None, 1.2, -200),
        Speaker(6, "festival", "cmu_us_slt_arctic_hts", None, 0.85, 150),
        pytest.param(Speaker(7, "accented", "lp_diphone", None, 1.2, -100), marks=needs_accented),
        pytest.param(Speaker(8, "accented", "czech_krb", None, 0.9, 250), marks=needs_accented),
        pytest.param(Speaker(9, "accented", "hy_fi_mv_diphone", None, 1.0, 0), marks=needs_accented),
    ],
)
def test_synthesize_writes_16k_mono_flac(speaker: Speaker, tmp_path: Path) -> None:
    flac = tmp_path / "x.flac"
    synthesize(speaker, "a short test, of the voice.", flac)
    info = sf.info(str(flac))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "FLAC")
    assert 0.5 < info.duration < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.flac"]


def _festival_phones(voice: str) -> set[str]:
    """The phone set festival uses with ``voice``."""
    listing = voices_module._run(
        ["festival", "--pipe"],
        stdin=f"(voice_{voice}) (print (mapcar car (cadr (assoc 'phones (PhoneSet.description '(phones))))))",
    )
    return set(listing.strip().splitlines()[-1].strip("()").split())


@needs_accented
def test_accented_phone_maps_cover_english_and_speak_the_voices_phones() -> None:
    scheme = voices_module.ACCENTED_SCHEME.read_text()
    english = _festival_phones("kal_diphone")
    for table in sorted({table for table, _ in voices_module.ACCENTED_VOICES.values()}):
        body = re.search(rf"\(set! {table}\s+'\((.*?)\)\)\n", scheme, re.S)
        assert body, table
        pairs = dict(re.findall(r'\((\S+) "([^"]+)"\)', body.group(1)))
        assert set(pairs) == english, table  # every English phone, nothing else
        for voice, (voice_table, _) in voices_module.ACCENTED_VOICES.items():
            if voice_table == table:
                targets = {phone for phones in pairs.values() for phone in phones.split()}
                assert targets <= _festival_phones(voice), (voice, targets - _festival_phones(voice))


@needs_accented
def test_accented_speech_is_english_to_a_recogniser_of_people(tmp_path: Path) -> None:
    """pocketsphinx, trained on human speech, gets most words of accented sentences right."""
    import jiwer
    from pocketsphinx import Decoder

    from imputer_asr.evaluation.peer import normalize_pocketsphinx, recognize_pcm16

    text = "I have never seen such a beautiful house."
    decoder = Decoder(samprate=16000, loglevel="FATAL")
    errors = {}
    for voice in ("lp_diphone", "hy_fi_mv_diphone", "czech_machac"):
        flac = tmp_path / f"{voice}.flac"
        synthesize(Speaker(1, "accented", voice, None, 1.0, 0), text, flac)
        samples, _ = sf.read(str(flac), dtype="int16")
        heard = normalize_pocketsphinx(recognize_pcm16(decoder, samples.tobytes()))
        errors[voice] = jiwer.wer("I HAVE NEVER SEEN SUCH A BEAUTIFUL HOUSE", heard or "<nothing>")
    # Seen: 0.625, 0.5 and 0; a broken phone map (silence, or the wrong phones) reads near 1
    assert max(errors.values()) < 0.8 and sum(errors.values()) / len(errors) < 0.5, errors


# --- rendering ----------------------------------------------------------------------------------


def _read_trans(corpus: Path) -> dict[str, dict[str, str]]:
    """part -> utterance id -> text, from every trans.txt."""
    texts: dict[str, dict[str, str]] = {}
    for trans in sorted(corpus.glob("*/*/*/*.trans.txt")):
        part = trans.relative_to(corpus).parts[0]
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            texts.setdefault(part, {})[utt_id] = text
    return texts


def _snapshot(corpus: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(corpus)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(corpus.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (HAVE_TOOLS and FORTUNE_DIR.is_dir()):
        pytest.skip(INSTALL_HINT)
    corpus = tmp_path_factory.mktemp("synth") / "corpus"
    render_corpus(corpus, TINY_UTTS, TINY_SPEAKERS, seed=5, num_jobs=2)
    return corpus


def test_tiny_corpus_layout_is_librispeech(tiny_corpus: Path) -> None:
    texts = _read_trans(tiny_corpus)
    assert sorted(texts) == sorted(PARTS)
    expected = {".completed", ".plan.json", "README", "speakers.tsv"}
    for part, utts in texts.items():
        assert len(utts) == TINY_UTTS[part]
        for utt_id in utts:
            speaker, chapter, index = utt_id.split("-")
            assert re.fullmatch(r"\d+", speaker) and re.fullmatch(r"\d+", chapter)
            assert re.fullmatch(r"\d{4}", index)
            expected.add(f"{part}/{speaker}/{chapter}/{utt_id}.flac")
            expected.add(f"{part}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt")
        assert all(TRANSCRIPT_RE.match(text) for text in utts.values())
    files = {str(p.relative_to(tiny_corpus)) for p in tiny_corpus.rglob("*") if p.is_file()}
    assert files == expected
    for flac in tiny_corpus.rglob("*.flac"):
        info = sf.info(str(flac))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.duration > 0.5


def test_tiny_corpus_parts_are_disjoint(tiny_corpus: Path) -> None:
    texts = _read_trans(tiny_corpus)
    speakers = {part: {utt.split("-")[0] for utt in utts} for part, utts in texts.items()}
    sentences = {part: set(utts.values()) for part, utts in texts.items()}
    for i, a in enumerate(PARTS):
        for b in PARTS[i + 1 :]:
            assert not speakers[a] & speakers[b]
            assert not sentences[a] & sentences[b]
    for part in PARTS:
        assert len(speakers[part]) == TINY_SPEAKERS[part]
        per_speaker = [sum(u.startswith(s + "-") for u in texts[part]) for s in speakers[part]]
        assert max(per_speaker) - min(per_speaker) <= 1
    rows = (tiny_corpus / "speakers.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["speaker_id", "part", "engine", "voice", "variant", "rate", "pitch"]
    assert {(r.split("\t")[0], r.split("\t")[1]) for r in rows[1:]} == {
        (s, part) for part in PARTS for s in speakers[part]
    }


def test_tiny_corpus_rerun_is_a_noop_and_resume_is_identical(tiny_corpus: Path) -> None:
    before = _snapshot(tiny_corpus)
    render_corpus(tiny_corpus, TINY_UTTS, TINY_SPEAKERS, seed=5, num_jobs=2)
    assert _snapshot(tiny_corpus) == before
    # An interrupted run: the sentinel and one FLAC are missing; resuming renders the same bytes.
    lost = sorted(tiny_corpus.rglob("*.flac"))[3]
    lost.unlink()
    (tiny_corpus / ".completed").unlink()
    render_corpus(tiny_corpus, TINY_UTTS, TINY_SPEAKERS, seed=5, num_jobs=1)
    after = _snapshot(tiny_corpus)
    assert {name: data for name, (data, _) in after.items()} == {
        name: data for name, (data, _) in before.items()
    }
    assert json.loads((tiny_corpus / ".completed").read_text())["seed"] == 5
    with pytest.raises(ValueError, match="other arguments"):
        render_corpus(tiny_corpus, TINY_UTTS, TINY_SPEAKERS, seed=6)


def test_tiny_corpus_reads_with_lhotse(tiny_corpus: Path) -> None:
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(tiny_corpus, dataset_parts=list(PARTS))
    texts = _read_trans(tiny_corpus)
    assert sorted(manifests) == sorted(PARTS)
    for part in PARTS:
        recordings, supervisions = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert sorted(r.id for r in recordings) == sorted(texts[part])
        assert {s.id: s.text for s in supervisions} == texts[part]
        assert all(r.sampling_rate == 16000 and r.num_channels == 1 for r in recordings)
        for s in supervisions:
            assert s.speaker == s.id.split("-")[0]
            assert s.duration == pytest.approx(recordings[s.recording_id].duration)


def _fake_synthesize(speaker: Speaker, spoken: str, flac_path: Path) -> None:
    if "fail" in spoken.split():
        raise RuntimeError("engine crashed")
    sf.write(str(flac_path), np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")


def _prompts_with_failures(n: int, failing: int) -> list[Prompt]:
    texts = [f"sentence number {number_to_words(i).lower()} is here." for i in range(n)]
    texts[:failing] = [f"this one will fail {number_to_words(i).lower()}." for i in range(failing)]
    prompts = [make_prompt(t) for t in texts]
    assert all(prompts)
    return prompts  # type: ignore[return-value]


@needs_tools
def test_failed_utterances_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = plan_corpus({"train": 40}, {"train": 2}, seed=0, prompts=_prompts_with_failures(40, 1))
    monkeypatch.setattr(render_module, "plan_corpus", lambda *args, **kwargs: plan)
    monkeypatch.setattr(render_module, "synthesize", _fake_synthesize)
    with caplog.at_level(logging.WARNING):
        render_corpus(tmp_path, {"train": 40}, {"train": 2}, num_jobs=2)
    assert "engine crashed" in caplog.text
    texts = _read_trans(tmp_path)["train"]
    assert len(texts) == 39 and len(list(tmp_path.rglob("*.flac"))) == 39
    assert not any("FAIL" in text for text in texts.values())
    assert (tmp_path / ".completed").exists()

    many = plan_corpus({"train": 40}, {"train": 2}, seed=0, prompts=_prompts_with_failures(40, 5))
    monkeypatch.setattr(render_module, "plan_corpus", lambda *args, **kwargs: many)
    with pytest.raises(RuntimeError, match="synthesis failed for 5 of 40"):
        render_corpus(tmp_path / "many", {"train": 40}, {"train": 2})
    assert not (tmp_path / "many" / ".completed").exists()

"""Synthetic speakers: one fixed engine + voice + variant + speaking rate + pitch.

Four engines, each discovered at run time. A corpus is read by espeak-ng, flite and festival unless
told otherwise (``DEFAULT_ENGINES``); ``accented`` is asked for by name:

- ``espeak-ng``: every installed English voice that needs no MBROLA (``en-us``, ``en-gb``,
  ``en-gb-scotland``, ``en-gb-x-rp``, ``en-029``, ``en-us-nyc``, ...) crossed with every voice
  variant (``m1``-``m8``, ``f1``-``f5``, ``klatt``-``klatt6``, ``whisper`` and the named ones)
  or none. ``rate`` is words per minute (``-s``), ``pitch`` is espeak's 0-99 pitch (``-p``).
- ``flite``: its general-domain voices (``kal``, ``kal16``, ``awb``, ``rms``, ``slt``; not the
  talking clock ``awb_time``). ``rate`` is a speed factor (``duration_stretch = 1 / rate``),
  ``pitch`` the target mean F0 in Hz (``int_f0_target_mean``). ``rms`` ignores that feature
  (it always speaks at 100 Hz), so its pitch is moved by sox's ``pitch`` effect instead.
- ``festival``: its installed English voices (Debian: ``kal_diphone``, ``ked_diphone``,
  ``cmu_us_slt_arctic_hts``, ...), spoken by ``text2wave``. Its HTS voices ignore
  ``Duration_Stretch``, so both prosody knobs are sox effects after synthesis: ``rate`` is the
  ``tempo`` factor and ``pitch`` a shift in cents (``pitch``). Voices built on MBROLA are never
  used: MBROLA is kept for evaluation only.
- ``accented``: festival's voices of other languages reading English (``accented.scm``):
  festival's English front end gives the phones, durations and F0 targets, each phone becomes
  the nearest phone(s) of the voice's language (Italian ``lp``/``pc``, Finnish ``lj``/``mv``,
  Czech ``dita``/``krb``/``machac``/``ph``), and the voice's own diphones speak them. English
  with an accent, from recordings of eight more people (three of them women or a child).
  ``rate`` is a tempo factor (durations divided by it), ``pitch`` a shift in cents of the F0
  targets from the voice's register; both applied inside festival, so the formants stay.

The espeak-ng variant ``fast`` is left out: it is a developer setting of the synthesiser
("unstable", says its file), not a voice. Whispered and robotic variants are kept: they are
intelligible, and the model should meet voices unlike the ones it trained on.

:func:`sample_speakers` gives each engine a share of the speakers in proportion to its
``ENGINE_WEIGHTS`` (largest remainders), so that the few voices of flite, festival and accented
are not drowned by espeak-ng's hundreds of combinations: they come back with other rates and pitches.
Within an engine, timbres (engine, voice, variant) are distinct while there are timbres left.
``engines`` restricts the draw (cross-engine experiments).

>>> speaker = Speaker(7, "espeak-ng", "en-gb", "f3", 150, 60)
>>> speaker.command("hello world.", Path("out.wav"))
['espeak-ng', '-v', 'en-gb+f3', '-s', '150', '-p', '60', '-w', 'out.wav', '--', 'hello world.']
"""

from __future__ import annotations

import functools
import math
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_ENGINES",
    "ENGINES",
    "ENGINE_WEIGHTS",
    "INSTALL_HINT",
    "Timbre",
    "Speaker",
    "missing_tools",
    "require_tools",
    "list_timbres",
    "sample_speakers",
]

ENGINES = ("accented", "espeak-ng", "festival", "flite")
# What a corpus is read by unless told otherwise. ``accented`` is asked for by name: with 60 of 200
# training speakers it moved the cross-engine dev (festival left out) by 0.2 points (RESULTS.md).
DEFAULT_ENGINES = ("espeak-ng", "festival", "flite")
# Shares of the speakers: espeak-ng's own variety (hundreds of voice x variant timbres) is the largest.
ENGINE_WEIGHTS = {"accented": 1.0, "espeak-ng": 2.0, "flite": 1.0, "festival": 1.0}
FESTIVAL_PACKAGES = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
ACCENTED_PACKAGES = (
    "festvox-italp16k festvox-itapc16k festvox-suopuhe-lj festvox-suopuhe-mv festvox-czech-dita "
    "festvox-czech-krb festvox-czech-machac festvox-czech-ph"
)
INSTALL_HINT = (
    "install espeak-ng, flite, festival and sox: "
    f"apt-get install -y espeak-ng flite sox fortunes {FESTIVAL_PACKAGES}"
)
TOOLS = ("espeak-ng", "flite", "text2wave", "festival", "sox")

ESPEAK_RATE_WPM = (120, 210)
ESPEAK_PITCH = (20, 80)
FLITE_SPEED = (0.8, 1.25)
# Target mean F0 in Hz per flite voice, around each voice's own register.
FLITE_F0_HZ = {"slt": (150, 230)}
FLITE_MALE_F0_HZ = (80, 145)
FESTIVAL_TEMPO = (0.8, 1.25)
FESTIVAL_PITCH_CENTS = (-400, 400)
ACCENTED_TEMPO = (0.8, 1.25)
ACCENTED_PITCH_CENTS = (-300, 300)
# Foreign festival voice -> (its phone map in accented.scm, F0 factor from the English front end's
# male register to the voice's own: women 1.8, the Czech child 2.2).
ACCENTED_VOICES = {
    "lp_diphone": ("accented_italian", 1.8),
    "pc_diphone": ("accented_italian", 1.0),
    "suo_fi_lj_diphone": ("accented_finnish", 1.8),
    "hy_fi_mv_diphone": ("accented_finnish", 1.0),
    "czech_dita": ("accented_czech", 1.8),
    "czech_krb": ("accented_czech", 2.2),
    "czech_machac": ("accented_czech", 1.0),
    "czech_ph": ("accented_czech", 1.0),
}
ACCENTED_SCHEME = Path(__file__).with_name("accented.scm")
# Festival voices are named by their database, not their language; these are the English ones.
_FESTIVAL_ENGLISH = re.compile(r"^((kal|ked|rab|don)_diphone|cmu_(us|uk)_\w+)$")
# flite voices whose F0 is fixed at this value whatever int_f0_target_mean says.
_FLITE_FIXED_F0_HZ = {"rms": 100.0}
_EXCLUDED_ESPEAK_VARIANTS = frozenset({"fast"})
_EXCLUDED_FLITE_VOICES = frozenset({"awb_time"})


@dataclass(frozen=True)
class Timbre:
    """What a speaker sounds like before rate and pitch: engine, voice and variant."""

    engine: str
    voice: str
    variant: str | None = None


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker; see the module docstring for the units of ``rate`` and ``pitch``."""

    speaker_id: int
    engine: str
    voice: str
    variant: str | None
    rate: int | float
    pitch: int | float

    @property
    def timbre(self) -> Timbre:
        return Timbre(self.engine, self.voice, self.variant)

    def command(self, text: str, wav_path: Path) -> list[str]:
        """The command line that speaks ``text`` into the WAV file ``wav_path``."""
        if self.engine == "espeak-ng":
            voice = self.voice if self.variant is None else f"{self.voice}+{self.variant}"
            rate, pitch = str(self.rate), str(self.pitch)
            return ["espeak-ng", "-v", voice, "-s", rate, "-p", pitch, "-w", str(wav_path), "--", text]
        if self.engine == "flite":
            return [
                "flite",
                "-voice",
                self.voice,
                "--setf",
                f"duration_stretch={1 / self.rate:.4f}",
                "--setf",
                f"int_f0_target_mean={self.pitch}",
                "-t",
                text,
                "-o",
                str(wav_path),
            ]
        if self.engine == "festival":
            return ["text2wave", "-eval", f"(voice_{self.voice})", "-o", str(wav_path)]
        if self.engine == "accented":
            table, register = ACCENTED_VOICES[self.voice]
            f0_scale = register * 2 ** (self.pitch / 1200)
            quoted = text.replace("\\", " ").replace('"', " ")  # a Scheme string literal
            say = (
                f'(accented_say "{quoted}" "{self.voice}" {table} {f0_scale:.4f} {1 / self.rate:.4f} '
                f'"{wav_path}")'
            )
            return ["festival", "--batch", str(ACCENTED_SCHEME), say]
        raise ValueError(f"unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")

    def stdin(self, text: str) -> bytes | None:
        """What :meth:`command` reads on its standard input: festival's text, else nothing."""
        return text.encode() if self.engine == "festival" else None

    def sox_effects(self) -> list[str]:
        """sox effects that finish the voice after synthesis (festival's prosody, fixed-F0 voices' pitch)."""
        if self.engine == "festival":
            effects = [] if self.rate == 1 else ["tempo", "-s", str(self.rate)]
            return effects + ([] if self.pitch == 0 else ["pitch", str(self.pitch)])
        fixed_f0 = _FLITE_FIXED_F0_HZ.get(self.voice) if self.engine == "flite" else None
        if fixed_f0 is None or self.pitch == fixed_f0:
            return []
        cents = round(1200 * math.log2(self.pitch / fixed_f0))
        return ["pitch", str(cents)]


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    """The programs of ``tools`` that are not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tools(tools: tuple[str, ...] = TOOLS) -> None:
    """Raise RuntimeError naming the missing programs unless all of ``tools`` are on PATH."""
    missing = missing_tools(tools)
    if missing:
        raise RuntimeError(f"missing {' '.join(missing)}; {INSTALL_HINT}")


def _run(command: list[str], stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=True, timeout=60)
    return result.stdout


def _voice_table(stdout: str) -> list[tuple[str, str]]:
    """(language, file) rows of ``espeak-ng --voices=...``; files may hold spaces."""
    rows = []
    for line in stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        file_fields = []
        for field in fields[4:]:
            if field.startswith("("):
                break
            file_fields.append(field)
        rows.append((fields[1], " ".join(file_fields)))
    return rows


def _espeak_timbres() -> list[Timbre]:
    voices = sorted(
        {
            language
            for language, file in _voice_table(_run(["espeak-ng", "--voices=en"]))
            if language.startswith("en") and not file.startswith("mb/")
        }
    )
    variants = sorted(
        {
            file.removeprefix("!v/")
            for _, file in _voice_table(_run(["espeak-ng", "--voices=variant"]))
            if file.startswith("!v/")
        }
        - _EXCLUDED_ESPEAK_VARIANTS
    )
    if not voices:
        raise RuntimeError(f"espeak-ng lists no English voice; {INSTALL_HINT}")
    return [Timbre("espeak-ng", v, variant) for v in voices for variant in [None, *variants]]


def _flite_timbres() -> list[Timbre]:
    listing = _run(["flite", "-lv"]).split(":", 1)[-1].split()
    voices = sorted(set(listing) - _EXCLUDED_FLITE_VOICES)
    return [Timbre("flite", voice) for voice in voices]


def _festival_voices() -> set[str]:
    return set(_run(["festival", "--pipe"], stdin="(print (voice.list))").strip().strip("()").split())


def _festival_timbres(installed: set[str]) -> list[Timbre]:
    voices = sorted(v for v in installed if _FESTIVAL_ENGLISH.match(v) and "mbrola" not in v)
    if not voices:
        raise RuntimeError(f"festival lists no English voice; {INSTALL_HINT}")
    return [Timbre("festival", voice) for voice in voices]


def _accented_timbres(installed: set[str]) -> list[Timbre]:
    """The accented voices installed, if any: the engine is optional (see ``DEFAULT_ENGINES``)."""
    return [Timbre("accented", voice) for voice in sorted(installed & set(ACCENTED_VOICES))]


@functools.lru_cache(maxsize=1)
def list_timbres() -> tuple[Timbre, ...]:
    """Every installed timbre, sorted; raises RuntimeError when a tool or an English voice is missing."""
    require_tools()
    festival = _festival_voices()  # one listing serves festival's English voices and the accented ones
    timbres = _espeak_timbres() + _flite_timbres() + _festival_timbres(festival) + _accented_timbres(festival)
    return tuple(sorted(timbres, key=lambda t: (t.engine, t.voice, t.variant or "")))


def _engine_counts(engines: list[str], n: int) -> dict[str, int]:
    """``n`` split among ``engines`` in proportion to ``ENGINE_WEIGHTS`` (largest remainders)."""
    total = sum(ENGINE_WEIGHTS[e] for e in engines)
    exact = {e: n * ENGINE_WEIGHTS[e] / total for e in engines}
    counts = {e: int(x) for e, x in exact.items()}
    for engine in sorted(engines, key=lambda e: (counts[e] - exact[e], e))[: n - sum(counts.values())]:
        counts[engine] += 1
    return counts


def _draw_timbres(timbres: tuple[Timbre, ...], n: int, rng: random.Random) -> list[Timbre]:
    """``n`` timbres, each engine's count in proportion to ``ENGINE_WEIGHTS``, in random order.

    Within an engine every timbre comes once, in random order, before any comes twice, so
    flite's 5, festival's 3 and the 8 accented voices return with other rates and pitches while espeak-ng's
    hundreds stay distinct.
    """
    by_engine: dict[str, list[Timbre]] = {}
    for timbre in timbres:
        by_engine.setdefault(timbre.engine, []).append(timbre)
    order: list[Timbre] = []
    for engine, count in sorted(_engine_counts(sorted(by_engine), n).items()):
        drawn: list[Timbre] = []
        while len(drawn) < count:
            cycle = list(by_engine[engine])
            rng.shuffle(cycle)
            drawn += cycle
        order += drawn[:count]
    rng.shuffle(order)
    return order


def _draw_prosody(timbre: Timbre, rng: random.Random) -> tuple[int | float, int | float]:
    if timbre.engine == "espeak-ng":
        return rng.randint(*ESPEAK_RATE_WPM), rng.randint(*ESPEAK_PITCH)
    if timbre.engine == "festival":
        return round(rng.uniform(*FESTIVAL_TEMPO), 2), rng.randint(*FESTIVAL_PITCH_CENTS)
    if timbre.engine == "accented":
        return round(rng.uniform(*ACCENTED_TEMPO), 2), rng.randint(*ACCENTED_PITCH_CENTS)
    speed = round(rng.uniform(*FLITE_SPEED), 2)
    return speed, rng.randint(*FLITE_F0_HZ.get(timbre.voice, FLITE_MALE_F0_HZ))


def sample_speakers(
    n: int, seed: int, first_id: int = 100, engines: Sequence[str] | None = None
) -> list[Speaker]:
    """``n`` distinct speakers with ids ``first_id, first_id + 1, ...``, the same for a seed.

    The draw depends only on ``seed``, ``engines`` (default: ``DEFAULT_ENGINES``) and the installed
    voices.

    >>> speakers = sample_speakers(3, seed=0)  # doctest: +SKIP
    >>> len({s.timbre for s in speakers})  # doctest: +SKIP
    3
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    unknown = sorted(set(engines or ()) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; expected some of {', '.join(ENGINES)}")
    engines = DEFAULT_ENGINES if engines is None else engines
    timbres = tuple(t for t in list_timbres() if t.engine in engines)
    if "accented" in engines and not any(t.engine == "accented" for t in timbres):
        raise RuntimeError(f"festival has no accented voice; apt-get install -y {ACCENTED_PACKAGES}")
    if not timbres:
        raise ValueError("engines names no engine")
    rng = random.Random(seed)
    speakers: list[Speaker] = []
    seen: set[tuple[Timbre, int | float, int | float]] = set()
    for timbre in _draw_timbres(timbres, n, rng):
        rate, pitch = _draw_prosody(timbre, rng)
        while (timbre, rate, pitch) in seen:
            rate, pitch = _draw_prosody(timbre, rng)
        seen.add((timbre, rate, pitch))
        speaker_id = first_id + len(speakers)
        speakers.append(Speaker(speaker_id, timbre.engine, timbre.voice, timbre.variant, rate, pitch))
    return speakers

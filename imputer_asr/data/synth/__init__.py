"""Offline synthetic read-speech corpus: fortunes read by espeak-ng and flite voices.

- :mod:`~imputer_asr.data.synth.text`: English sentences from Debian's fortunes, normalised the
  LibriSpeech way (upper case, letters and apostrophes, numbers spelled out).
- :mod:`~imputer_asr.data.synth.voices`: speakers, each a fixed engine + voice + variant + rate + pitch.
- :mod:`~imputer_asr.data.synth.plan`: who reads what, under which LibriSpeech file name.
- :mod:`~imputer_asr.data.synth.render`: :func:`render_corpus` writes the FLAC and ``trans.txt`` files.

The result reads with ``lhotse.recipes.prepare_librispeech(corpus, dataset_parts=[...])``.
"""

from .plan import Utterance, plan_corpus
from .render import render_corpus, synthesize
from .text import (
    Prompt,
    load_prompts,
    load_sentences,
    make_prompt,
    normalize_sentence,
    number_to_words,
    ordinal_to_words,
)
from .voices import Speaker, Timbre, list_timbres, require_tools, sample_speakers

__all__ = [
    "Prompt",
    "Speaker",
    "Timbre",
    "Utterance",
    "list_timbres",
    "load_prompts",
    "load_sentences",
    "make_prompt",
    "normalize_sentence",
    "number_to_words",
    "ordinal_to_words",
    "plan_corpus",
    "render_corpus",
    "require_tools",
    "sample_speakers",
    "synthesize",
]

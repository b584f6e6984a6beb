"""English sentences for the synthetic corpus: Debian's fortunes, normalised the LibriSpeech way.

A fortune file is a list of ``%``-separated records. Each record is cleaned (terminal
overstrike removed, ``-- Author`` attribution lines dropped, records holding ascii art or
control characters dropped), split into paragraphs at blank lines and into sentences at
``.``, ``!`` and ``?``.

Every sentence then has two forms, held by a :class:`Prompt`:

- ``text``, the transcript: upper case, only the letters A-Z, apostrophes inside words and
  single spaces (LibriSpeech's ``trans.txt`` alphabet);
- ``spoken``, what the speech engine is given: the same words in lower case with the
  sentence's commas and final ``.``/``!``/``?`` kept for prosody. Because the engine reads the
  words already spelled out, the audio says exactly the transcript.

Numbers are spelled out by :func:`number_to_words` with no "AND" (``115`` is ``ONE HUNDRED
FIFTEEN``). A bare four-digit number from 1100 to 2099 is read as a year (``1984`` is
``NINETEEN EIGHTY FOUR``, ``1905`` is ``NINETEEN O FIVE``, ``2026`` is ``TWENTY TWENTY SIX``,
but ``2005`` is ``TWO THOUSAND FIVE``); ``3rd`` is ``THIRD``, ``1960s`` is ``NINETEEN SIXTIES``,
``2.5`` is ``TWO POINT FIVE``, ``50%`` is ``FIFTY PERCENT``. Titles such as ``Mr.`` and
``Dr.`` are expanded. A sentence that cannot be read out unambiguously is dropped
(:func:`normalize_sentence` returns None): URLs and e-mail addresses, code and symbols
(``$ # & * / = < > _ @ [ ] { } | \\ ^ ~``), ``%`` not after a number, letters that stay
non-ASCII after NFKD folding, acronyms and other all-capital words in mixed-case text, words
without a vowel (``hmm``, ``tv``), and sentences outside 4 to 30 words.

>>> normalize_sentence("Mr. Smith's 3rd car, bought in 1984, isn't blue!")
"MISTER SMITH'S THIRD CAR BOUGHT IN NINETEEN EIGHTY FOUR ISN'T BLUE"
>>> normalize_sentence("See http://example.com for details.") is None
True
>>> number_to_words(2026), number_to_words(2026, year=True)
('TWO THOUSAND TWENTY SIX', 'TWENTY TWENTY SIX')
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FORTUNE_DIR",
    "MIN_WORDS",
    "MAX_WORDS",
    "Prompt",
    "number_to_words",
    "ordinal_to_words",
    "normalize_sentence",
    "make_prompt",
    "split_sentences",
    "read_fortune_records",
    "load_prompts",
    "load_sentences",
]

FORTUNE_DIR = Path("/usr/share/games/fortunes")
MIN_WORDS = 4
MAX_WORDS = 30

_ONES = (
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN "
    "FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN"
).split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = ((10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (10**3, "THOUSAND"))
_IRREGULAR_ORDINALS = {
    "ONE": "FIRST",
    "TWO": "SECOND",
    "THREE": "THIRD",
    "FIVE": "FIFTH",
    "EIGHT": "EIGHTH",
    "NINE": "NINTH",
    "TWELVE": "TWELFTH",
}
# Titles before a name, written without their period so that they never end a sentence.
_TITLES = {
    "Mr": "Mister",
    "Mrs": "Missus",
    "Dr": "Doctor",
    "Prof": "Professor",
    "Jr": "Junior",
    "Sr": "Senior",
    "Gen": "General",
    "Col": "Colonel",
    "Capt": "Captain",
    "Lt": "Lieutenant",
    "Sgt": "Sergeant",
    "Rev": "Reverend",
    "Mt": "Mount",
}
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.")
_ETC_RE = re.compile(r"\betc\.")
_VS_RE = re.compile(r"\bvs?\.")
# Initials and dotted acronyms ("J. R. R. Tolkien", "U.S.A.") lose their periods.
_INITIAL_RE = re.compile(r"\b([A-Z])\.(?=\s*[A-Z])")
_UNREADABLE_RE = re.compile(
    r"https?:|ftp:|www\.|://|\.(com|org|net|edu|gov)\b|\b[a-z]\.[a-z]\.|\d-\d|\bSt\.|\bNo\.\s*\d"
)
_FORBIDDEN_RE = re.compile(r"[^A-Za-z0-9\s.,;:!?'\"()%-]")
_NUMBER_RE = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th|'s|s|%)?(?![\w%])")
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_VOWEL_RE = re.compile(r"[AEIOUYaeiouy]")
_LETTERS_RE = re.compile(r"[A-Za-z]")
_DIGIT_RE = re.compile(r"[\d%]")
_PRONOUN_I_RE = re.compile(r"\bi\b")
# Applied in order to a sentence whose numbers are spelled out; leaves words, apostrophes inside
# words, commas and single sentence marks.
_PUNCTUATION_RULES = [
    (re.compile(r"(?<=[A-Za-z])-(?=[A-Za-z])"), " "),  # long-forgotten -> long forgotten
    (re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])"), " "),  # quotes, not apostrophes
    (re.compile(r"\s*[-;:()\"]+\s*"), ", "),  # dashes, colons, brackets, quotes: a pause
    (re.compile(r"\s*([.!?])[.!?,\s]*"), r"\1 "),  # "!!!" and "..." -> one mark
    (re.compile(r"\s*,[,\s]*"), ", "),
    (re.compile(r"([.!?]),|,\s*([.!?])"), r"\1\2"),
    (re.compile(r"\s+"), " "),
]
_ART_LINE_MIN_CHARS = 5
_ART_LINE_MAX_SYMBOL_SHARE = 0.5


@dataclass(frozen=True)
class Prompt:
    """One sentence: ``text`` is the transcript, ``spoken`` is what the engine reads."""

    text: str
    spoken: str


def _under_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def _cardinal(n: int) -> list[str]:
    if n == 0:
        return ["ZERO"]
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _under_thousand(n // scale) + [name]
            n %= scale
    if n:
        words += _under_thousand(n)
    return words


def number_to_words(n: int, *, year: bool = False) -> str:
    """Spell a non-negative integer in upper-case words, without "AND" and without hyphens.

    With ``year=True`` a four-digit number is read in pairs, the way years are said:
    ``1984`` -> ``NINETEEN EIGHTY FOUR``, ``1900`` -> ``NINETEEN HUNDRED``, ``1905`` ->
    ``NINETEEN O FIVE``; ``2000`` to ``2009`` (and likewise ``X000``-``X009``) stay cardinal.

    >>> number_to_words(115)
    'ONE HUNDRED FIFTEEN'
    >>> number_to_words(1984, year=True)
    'NINETEEN EIGHTY FOUR'
    >>> number_to_words(2005, year=True)
    'TWO THOUSAND FIVE'
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number_to_words expects an int, got {type(n).__name__}")
    if n < 0 or n >= 10**15:
        raise ValueError(f"number_to_words reads 0 <= n < 10**15, got {n}")
    if not year:
        return " ".join(_cardinal(n))
    if not 1000 <= n <= 9999:
        raise ValueError(f"a year reading needs four digits, got {n}")
    high, low = divmod(n, 100)
    if high % 10 == 0 and low < 10:
        return " ".join(_cardinal(n))
    if low == 0:
        return " ".join(_cardinal(high) + ["HUNDRED"])
    if low < 10:
        return " ".join(_cardinal(high) + ["O", _ONES[low]])
    return " ".join(_cardinal(high) + _cardinal(low))


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal number: ``3`` -> ``THIRD``, ``21`` -> ``TWENTY FIRST``, ``40`` -> ``FORTIETH``.

    >>> ordinal_to_words(112)
    'ONE HUNDRED TWELFTH'
    """
    *head, last = number_to_words(n).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return " ".join([*head, last])


def _plural(words: str) -> str:
    """``NINETEEN SIXTY`` -> ``NINETEEN SIXTIES`` (decades: ``1960s``, ``'80s``)."""
    if words.endswith("Y"):
        return words[:-1] + "IES"
    return words + ("ES" if words.endswith("X") else "S")


def _spell_number(match: re.Match[str]) -> str:
    """Words for one number token; raises ValueError when it cannot be read out."""
    digits, decimals, suffix = match.group(1), match.group(2), match.group(3)
    if len(digits) > 1 and digits.startswith("0"):
        raise ValueError(f"leading zero: {match.group(0)}")
    value = int(digits.replace(",", ""))
    if decimals is not None:
        if suffix not in (None, "%"):
            raise ValueError(f"unreadable number: {match.group(0)}")
        words = number_to_words(value) + " POINT " + " ".join(_ONES[int(d)] for d in decimals)
    elif suffix in ("st", "nd", "rd", "th"):
        return ordinal_to_words(value)
    else:
        as_year = "," not in digits and len(digits) == 4 and 1100 <= value <= 2099
        words = number_to_words(value, year=as_year)
    if suffix in ("s", "'s"):
        words = _plural(words)
    elif suffix == "%":
        words += " PERCENT"
    return words


def _fold_ascii(text: str) -> str | None:
    """NFKD-fold accents away (``café`` -> ``cafe``); None when non-ASCII letters remain."""
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"', 0x60: "'"})
    text = text.translate({0x2013: "-", 0x2014: " -- ", 0x2026: "..."})
    if text.isascii():
        return text
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return folded if folded.isascii() else None


def _expand_abbreviations(text: str) -> str:
    text = _TITLE_RE.sub(lambda m: _TITLES[m.group(1)], text)
    text = _ETC_RE.sub("et cetera.", text)
    text = _VS_RE.sub("versus", text)
    return _INITIAL_RE.sub(r"\1 ", text)


def _has_unreadable_word(text: str) -> bool:
    """Acronyms or shouted words in mixed-case text, and words without a vowel."""
    mixed_case = text != text.upper()
    for word in _WORD_RE.findall(text):
        if len(word) < 2:
            continue
        if mixed_case and word.isupper():
            return True
        if _VOWEL_RE.search(word) is None:
            return True
    return False


def _spoken_form(sentence: str) -> str | None:
    """Lower-case words with commas and final punctuation, or None when unreadable."""
    text = _fold_ascii(sentence)
    if text is None:
        return None
    text = _expand_abbreviations(" ".join(text.split()))
    if _UNREADABLE_RE.search(text) or _FORBIDDEN_RE.search(text):
        return None
    if text == text.upper():
        return None
    try:
        text = _NUMBER_RE.sub(lambda match: _spell_number(match).lower(), text)
    except ValueError:
        return None
    if _DIGIT_RE.search(text) or _has_unreadable_word(text):
        return None
    for pattern, replacement in _PUNCTUATION_RULES:
        text = pattern.sub(replacement, text)
    text = text.strip(" ,").lstrip(".!? ").lower()
    text = _PRONOUN_I_RE.sub("I", text)
    return text if any(c.isalpha() for c in text) else None


def _transcript(spoken: str) -> str:
    return " ".join(_WORD_RE.findall(spoken)).upper()


def make_prompt(sentence: str) -> Prompt | None:
    """Both forms of one sentence, or None when it cannot be read out or has not 4-30 words.

    >>> make_prompt("A day for firm decisions!!!!!  Or is it?")
    Prompt(text='A DAY FOR FIRM DECISIONS OR IS IT', spoken='a day for firm decisions! or is it?')
    """
    spoken = _spoken_form(sentence)
    if spoken is None:
        return None
    text = _transcript(spoken)
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        return None
    return Prompt(text=text, spoken=spoken)


def normalize_sentence(text: str) -> str | None:
    """The LibriSpeech-style transcript of one sentence, or None when it is dropped.

    >>> normalize_sentence('"Certainly," she replied -- with 2 dogs.')
    'CERTAINLY SHE REPLIED WITH TWO DOGS'
    >>> normalize_sentence("Too short.") is None
    True
    """
    prompt = make_prompt(text)
    return None if prompt is None else prompt.text


def split_sentences(paragraph: str) -> list[str]:
    """Split running text after ``.``, ``!`` or ``?`` (and closing quotes) followed by a space.

    Titles and initials are expanded first so that ``Mr. Smith`` does not end a sentence.

    >>> split_sentences('He asked.  "Why not?"  Mr. Smith left...  Then it rained')
    ['He asked.', '"Why not?"', 'Mister Smith left...', 'Then it rained']
    """
    text = _expand_abbreviations(" ".join(paragraph.split()))
    marked = re.sub(r"([.!?]+[\"')]*)\s+", "\\1\n", text)
    return [s for s in marked.split("\n") if s]


def _is_art_line(line: str) -> bool:
    chars = len(line) - line.count(" ") - line.count("\t")
    if chars < _ART_LINE_MIN_CHARS:
        return False
    symbols = chars - len(_LETTERS_RE.findall(line))
    return symbols / chars > _ART_LINE_MAX_SYMBOL_SHARE


def _record_paragraphs(record: str) -> list[str]:
    """Paragraphs of one fortune, or [] for ascii art and terminal control sequences."""
    record = re.sub(r".\x08", "", record)  # overstrike: "_\bx" underlines, "x\bx" bolds
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", record):
        return []
    lines = [line for line in record.split("\n") if not re.match(r"\s*--\s", line)]
    if any(_is_art_line(line) for line in lines):
        return []
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs


def read_fortune_records(path: Path) -> list[str]:
    """The ``%``-separated records of one fortune file, in file order."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    return [r for r in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE) if r.strip()]


def _fortune_files(fortune_dir: Path) -> list[Path]:
    if not fortune_dir.is_dir():
        raise FileNotFoundError(f"no fortunes in {fortune_dir}; install them: apt-get install -y fortunes")
    files = [p for p in sorted(fortune_dir.iterdir()) if p.is_file() and p.suffix not in (".dat", ".u8")]
    if not files:
        raise FileNotFoundError(f"{fortune_dir} holds no fortune files")
    return files


def load_prompts(fortune_dir: Path = FORTUNE_DIR) -> list[Prompt]:
    """Every usable, distinct sentence of the fortune files, in file and record order.

    Files are read in name order (sub-directories such as ``off/`` are not entered); the
    first occurrence of a transcript wins.
    """
    prompts: dict[str, Prompt] = {}
    for path in _fortune_files(Path(fortune_dir)):
        for record in read_fortune_records(path):
            for paragraph in _record_paragraphs(record):
                for sentence in split_sentences(paragraph):
                    prompt = make_prompt(sentence)
                    if prompt is not None and prompt.text not in prompts:
                        prompts[prompt.text] = prompt
    return list(prompts.values())


def load_sentences(fortune_dir: Path = FORTUNE_DIR) -> list[str]:
    """The transcripts of :func:`load_prompts`: distinct, normalised, in a deterministic order."""
    return [prompt.text for prompt in load_prompts(fortune_dir)]

"""Word n-gram language model and lexicon for CTC beam search.

:func:`train_ngram` estimates an interpolated Kneser-Ney model (Chen & Goodman, 1998; one discount
per order) from word sequences, and :meth:`NgramLM.write_arpa` writes it in the ARPA format that
KenLM reads. In that backoff form an n-gram seen in training is listed with its interpolated
probability and each context with its interpolation weight, so that
``p(w | h) = listed(h w)`` if ``h w`` was seen, else ``weight(h) * p(w | h minus its first word)``,
which is exactly the interpolated model. :func:`write_lexicon` spells every word of the model with
the BPE pieces of the acoustic model, the form the lexicon-constrained decoder of
:mod:`imputer_asr.decoding.lm_search` searches over.

>>> lm = train_ngram([["A", "CAT"], ["A", "DOG"]], order=2)
>>> round(sum(10 ** lm.log10_prob(w, ("A",)) for w in lm.vocabulary if w != "<s>"), 6)
1.0
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.files import write_text_atomic

__all__ = [
    "NgramLM",
    "train_ngram",
    "load_word_prior",
    "write_lexicon",
    "DEFAULT_PRIOR_UNIFORM_SHARE",
    "BOS",
    "EOS",
    "UNK",
]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_LIBRISPEECH_WORD = re.compile(r"[A-Z]+(?:'[A-Z]+)*")
DEFAULT_PRIOR_UNIFORM_SHARE = 0.5
"""Uniform share mixed into a unigram prior (full synth dev perplexity: 522 at 0.5, 534 at 0.1)."""
_LOG10_ZERO = -99.0  # how ARPA files write log10(0), here the probability of <s>


@dataclass
class NgramLM:
    """An interpolated Kneser-Ney model in backoff form.

    ``probs[k]`` maps each listed n-gram of order k + 1 (a tuple of words) to log10 p(last | rest);
    ``backoffs[k]`` maps each listed n-gram of order k + 1 that is the context of a longer one to
    log10 of its interpolation weight.
    """

    order: int
    probs: list[dict[tuple[str, ...], float]]
    backoffs: list[dict[tuple[str, ...], float]]

    @property
    def vocabulary(self) -> list[str]:
        return [gram[0] for gram in self.probs[0]]

    def log10_prob(self, word: str, context: Sequence[str]) -> float:
        """log10 p(word | context), backing off as a KenLM query would (unknown words as <unk>)."""
        if (word,) not in self.probs[0]:
            word = UNK
        context = tuple(w if (w,) in self.probs[0] else UNK for w in context)[-(self.order - 1) :]
        if self.order == 1:
            context = ()
        penalty = 0.0
        while True:
            listed = self.probs[len(context)].get((*context, word))
            if listed is not None:
                return penalty + listed
            penalty += self.backoffs[len(context) - 1].get(context, 0.0)
            context = context[1:]

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> tuple[float, float]:
        """Perplexity over every word and </s> of ``sentences``, and the fraction of their words
        outside the vocabulary (scored as <unk>, as a KenLM query would)."""
        total, count, unknown, words = 0.0, 0, 0, 0
        vocab = self.probs[0]
        for sentence in sentences:
            context = [BOS]
            for word in [*sentence, EOS]:
                total += self.log10_prob(word, context)
                count += 1
                context.append(word)
            words += len(sentence)
            unknown += sum(1 for w in sentence if (w,) not in vocab)
        if not count:
            raise ValueError("no sentences to measure the perplexity on")
        return 10 ** (-total / count), unknown / max(words, 1)

    def write_arpa(self, path: Path) -> None:
        """Write the model as an ARPA file, atomically (a temporary file renamed into place)."""
        lines = ["", "\\data\\"]
        lines += [f"ngram {k + 1}={len(grams)}" for k, grams in enumerate(self.probs)]
        for k, grams in enumerate(self.probs):
            lines += ["", f"\\{k + 1}-grams:"]
            backoffs = self.backoffs[k] if k < self.order - 1 else {}
            for gram, logp in grams.items():
                line = f"{logp:.6f}\t{' '.join(gram)}"
                lines.append(f"{line}\t{backoffs[gram]:.6f}" if gram in backoffs else line)
        lines += ["", "\\end\\", ""]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "\n".join(lines))


def train_ngram(
    sentences: Iterable[Sequence[str]],
    order: int = 3,
    prior: Mapping[str, float] | None = None,
    prior_uniform_share: float = DEFAULT_PRIOR_UNIFORM_SHARE,
) -> NgramLM:
    """Interpolated Kneser-Ney estimate of an ``order``-gram model of ``sentences`` (word lists).

    Orders below the highest count each n-gram by its number of distinct left extensions (its
    "continuation count"), except n-grams that start with <s>, which nothing precedes. Each order
    discounts with D = n1 / (n1 + 2 n2) from its counts-of-counts; the unigrams interpolate with a
    base distribution, so every word has a probability.

    Without ``prior`` the base is uniform over the vocabulary and <unk>. ``prior`` (word -> relative
    frequency, e.g. from a large general corpus) adds its words to the vocabulary and makes the base
    ``(1 - prior_uniform_share) * prior + prior_uniform_share * uniform``: the mass Kneser-Ney sets
    aside for words it has not seen goes to them in proportion to how common they are elsewhere.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    if not 0.0 < prior_uniform_share <= 1.0:
        raise ValueError(f"prior_uniform_share must be in (0, 1], got {prior_uniform_share}")
    raw: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for end in range(1, len(padded)):  # every n-gram that predicts a word (never <s>)
            for k in range(min(order, end + 1)):
                raw[k][padded[end - k : end + 1]] += 1
    if not raw[0]:
        raise ValueError("no sentences to train a language model on")
    counts = _adjusted_counts(raw)

    probs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order)]
    backoffs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order - 1)]
    linear: list[dict[tuple[str, ...], float]] = [{} for _ in range(order)]
    prior = {w: f for w, f in (prior or {}).items() if f > 0 and w not in (BOS, EOS, UNK)}
    vocab = sorted({gram[0] for gram in counts[0]} | set(prior) | {UNK})
    base = _base_distribution(vocab, prior, prior_uniform_share)
    discount, total = _discount(counts[0]), sum(counts[0].values())
    leftover = discount * len(counts[0]) / total
    for word in vocab:
        linear[0][(word,)] = max(counts[0][(word,)] - discount, 0) / total + leftover * base[word]
    for k in range(1, order):
        discount = _discount(counts[k])
        context_total: Counter[tuple[str, ...]] = Counter()
        context_types: Counter[tuple[str, ...]] = Counter()
        for gram, count in counts[k].items():
            context_total[gram[:-1]] += count
            context_types[gram[:-1]] += 1
        weight = {h: discount * context_types[h] / total_h for h, total_h in context_total.items()}
        for gram, count in counts[k].items():
            # The suffix of a seen n-gram was seen too, so its interpolated probability is listed.
            lower = linear[k - 1][gram[1:]]
            linear[k][gram] = (count - discount) / context_total[gram[:-1]] + weight[gram[:-1]] * lower
        backoffs[k - 1] = {h: math.log10(w) for h, w in sorted(weight.items())}
    for k in range(order):
        probs[k] = {gram: math.log10(p) for gram, p in sorted(linear[k].items())}
    probs[0] = {(BOS,): _LOG10_ZERO, **probs[0]}
    return NgramLM(order=order, probs=probs, backoffs=backoffs)


def _base_distribution(
    vocab: list[str], prior: Mapping[str, float], uniform_share: float
) -> dict[str, float]:
    """What the unigrams interpolate with: uniform over ``vocab``, or ``prior`` mixed with it."""
    uniform = 1.0 / len(vocab)
    if not prior:
        return dict.fromkeys(vocab, uniform)
    norm = (1.0 - uniform_share) / sum(prior.values())
    return {w: norm * prior.get(w, 0.0) + uniform_share * uniform for w in vocab}


def _adjusted_counts(raw: list[Counter[tuple[str, ...]]]) -> list[Counter[tuple[str, ...]]]:
    """Kneser-Ney counts: raw counts for the highest order and for n-grams that start with <s>,
    the number of distinct words seen before the n-gram for the others."""
    adjusted: list[Counter[tuple[str, ...]]] = [Counter() for _ in raw]
    adjusted[-1] = Counter(raw[-1])
    for k in range(len(raw) - 1):
        for gram, count in raw[k].items():
            if gram[0] == BOS:
                adjusted[k][gram] = count
        for longer in raw[k + 1]:  # <s> only ever starts an n-gram, so longer[1:] never does
            adjusted[k][longer[1:]] += 1
    return adjusted


def _discount(counts: Counter[tuple[str, ...]]) -> float:
    """D = n1 / (n1 + 2 n2), kept inside [0.1, 0.9] for tiny corpora."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def load_word_prior(source: str, size: int) -> dict[str, float]:
    """The ``size`` most frequent words of ``source`` with their relative frequencies, for
    :func:`train_ngram`'s ``prior``.

    ``source`` is ``wordfreq`` (English word frequencies of the wordfreq package, gathered from
    Wikipedia, subtitles, news, books and the web; they hold no sentences, so they cannot leak a
    test transcript) or a text file of ``word<TAB>count`` lines. Words are upper-cased, and only
    words written the LibriSpeech way (letters, inner apostrophes) are kept.
    """
    if size < 1:
        raise ValueError(f"the prior's size must be at least 1, got {size}")
    if source == "wordfreq":
        try:
            from wordfreq import get_frequency_dict
        except ImportError:
            raise ValueError("the wordfreq prior needs the wordfreq package: pip install wordfreq") from None
        pairs = get_frequency_dict("en", wordlist="large").items()
    else:
        pairs = []
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read word counts {source}: {exc}") from None
        for number, line in enumerate(lines, 1):
            fields = line.split()
            try:
                word, count = fields[0], float(fields[1])
            except (IndexError, ValueError):
                raise ValueError(f"{source}:{number}: expected 'word<TAB>count', got {line!r}") from None
            pairs.append((word, count))
    words: dict[str, float] = {}
    for word, freq in pairs:
        word = word.upper()
        if freq > 0 and _LIBRISPEECH_WORD.fullmatch(word):
            words[word] = words.get(word, 0.0) + freq
    if not words:
        raise ValueError(f"{source}: no words written in letters and apostrophes")
    return dict(sorted(words.items(), key=lambda item: (-item[1], item[0]))[:size])


def write_lexicon(words: Iterable[str], tokenizer: Tokenizer, path: Path) -> int:
    """Write ``word piece piece ...`` lines, each word spelled by the tokenizer; returns how many.

    Words the tokenizer can only spell with <unk> are left out: the decoder could never emit them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for word in sorted(set(words) - {BOS, EOS, UNK}):
        ids = tokenizer.encode(word)
        if not ids or tokenizer.unk_id in ids:
            continue
        lines.append(f"{word}\t{' '.join(tokenizer.id_to_piece(i) for i in ids)}\n")
    write_text_atomic(path, "".join(lines))
    return len(lines)

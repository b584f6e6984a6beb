"""Transcribe audio files or arrays with a packaged model: :func:`load_model` and :class:`Transcriber`.

>>> from imputer_asr import load_model
>>> asr = load_model("recipes/synth/exp/imputer/model.pt")  # doctest: +SKIP
>>> for t in asr.transcribe(["talk.mp3", "notes.wav"]):  # doctest: +SKIP
...     print(t.audio, t.text, t.words[:2], t.error)

Each input is opened (a file's header only) and cut into overlapping windows
(:func:`~imputer_asr.data.audio.plan_windows`: 30 s with 5 s of overlap by default). Inputs are taken
in groups of about ``group_seconds`` of audio; the windows of a group are sorted by length and
decoded in batches of about ``batch_seconds`` (fbank, then CTC greedy search or K-step Imputer
decoding). Each window's alignment gives timed words (:func:`~.words.alignment_words`)
and the windows of one input are stitched (:func:`~.words.stitch`), so memory is bounded
by one batch of windows whatever the length of the recordings.

An input that cannot be transcribed gives a :class:`Transcript` whose ``error`` names it and the
cause; the other inputs are transcribed as usual.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lhotse.utils import compute_num_frames
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from imputer_asr.data.audio import AudioError, AudioSource, open_audio, plan_windows, resampled_length
from imputer_asr.data.prepare import fbank_extractor
from imputer_asr.decoding.ctc import greedy_alignment
from imputer_asr.decoding.imputer import decode_imputer
from imputer_asr.export import load_packaged_or_onnx
from imputer_asr.model.conformer import MIN_INPUT_FRAMES, SUBSAMPLING
from imputer_asr.model.precision import bf16_inference
from imputer_asr.training.checkpoint import PackagedModel
from imputer_asr.transcription.words import Word, alignment_words, stitch

if TYPE_CHECKING:  # the LM decoder (and flashlight) loads only when a lexicon is given
    from imputer_asr.decoding.lm_search import LexiconBeamSearch, LMWeights

__all__ = ["DECODERS", "TranscribeOptions", "Transcript", "Transcriber", "load_model"]

DECODERS = ("ctc", "imputer", "lm")

Audio = str | os.PathLike | np.ndarray | Tensor
"""A path to an audio file, or samples: (samples,) or (channels, samples)."""


@dataclass(frozen=True)
class TranscribeOptions:
    """How recordings are cut into windows and batched.

    A window should give a few seconds of context on each side of the seams in its overlap.
    ``batch_seconds`` is the padded audio of one network batch (larger is faster, until memory runs
    short); ``group_seconds`` is how much audio is gathered and sorted by length before decoding
    (the transcripts of a group come out together).
    """

    window_seconds: float = 30.0
    overlap_seconds: float = 5.0
    batch_seconds: float = 120.0
    group_seconds: float = 1800.0

    def __post_init__(self) -> None:
        if self.window_seconds < 1.0 or not 0.0 <= self.overlap_seconds < self.window_seconds:
            raise ValueError(
                "need window_seconds >= 1 and 0 <= overlap_seconds < window_seconds, got "
                f"{self.window_seconds} and {self.overlap_seconds}"
            )
        if self.batch_seconds <= 0 or self.group_seconds <= 0:
            raise ValueError("batch_seconds and group_seconds must be positive")


@dataclass(frozen=True)
class Transcript:
    """The transcript of one input; ``error`` (naming the input and the cause) when it failed."""

    audio: str
    text: str = ""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times rounded to milliseconds, ``error`` only when the input failed."""
        record: dict[str, Any] = {
            "audio": self.audio,
            "text": self.text,
            "duration": round(self.duration, 3),
            "words": [
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words
            ],
        }
        if self.error is not None:
            record["error"] = self.error
        return record


@dataclass(frozen=True)
class _Decoding:
    decoder: str
    steps: int


@dataclass(frozen=True)
class _Window:
    item: int  # index of the input in its group
    start: int  # samples, at the input's own rate
    stop: int
    seconds: float


class Transcriber:
    """A packaged model loaded once, ready to transcribe; made by :func:`load_model`.

    Args:
        packaged: the model, tokenizer and config of a ``model.pt`` or of its ONNX export.
        device: where the network runs (``"cpu"``, ``"cuda"``); features are computed on the CPU.
        options: windows and batching.
        language_model: a lexicon-constrained beam search with a word LM
            (:class:`imputer_asr.decoding.lm_search.LexiconBeamSearch`), which enables the ``"lm"`` decoder
            and makes it the default.
        bf16: run the network under bfloat16 autocast where the device has it in hardware
            (:func:`imputer_asr.model.precision.bf16_inference`).
    """

    def __init__(
        self,
        packaged: PackagedModel,
        device: str | torch.device = "cpu",
        options: TranscribeOptions | None = None,
        language_model: LexiconBeamSearch | None = None,
        bf16: bool = False,
    ) -> None:
        self.device = _device(device)
        self.model = packaged.model.to(self.device).eval()
        if bf16:
            self.model = bf16_inference(self.model, self.device)
        self.tokenizer = packaged.tokenizer
        self.config = packaged.config
        self.trained_as = packaged.info.get("trained_as", "ctc")
        self.options = options or TranscribeOptions()
        self.language_model = language_model
        self._extractor = fbank_extractor(packaged.config.features)
        self._frame_seconds = packaged.config.features.frame_shift * SUBSAMPLING

    @property
    def default_decoder(self) -> str:
        """``lm`` when a language model was given, else ``imputer`` for a model trained as an
        Imputer, else ``ctc``."""
        if self.language_model is not None:
            return "lm"
        return "imputer" if self.trained_as == "imputer" else "ctc"

    @property
    def block_size(self) -> int:
        """B of Imputer decoding: the model's training block size, and the default number of steps."""
        return self.config.imputer.block_size

    def transcribe(
        self,
        audio: Audio | Iterable[Audio],
        *,
        decoder: str | None = None,
        steps: int | None = None,
        sample_rate: int = 16000,
        progress: bool | None = False,
    ) -> list[Transcript]:
        """Transcribe files or arrays, one :class:`Transcript` per input, in input order.

        Args:
            audio: one input or several: paths of audio files (any format, rate and channel count
                soundfile reads), or samples as numpy arrays or torch tensors, (samples,) or
                (channels, samples).
            decoder: ``"ctc"`` (greedy search), ``"imputer"`` (K-step block decoding) or ``"lm"``
                (CTC beam search with the transcriber's language model); default
                :attr:`default_decoder`. The Imputer decoding of a CTC model is well defined (the
                network starts from an all-[MASK] alignment, which is what it was trained on).
            steps: K for the Imputer, in [1, :attr:`block_size`]; default :attr:`block_size`.
            sample_rate: the sample rate of the arrays (files carry their own).
            progress: a progress bar on stderr, in seconds of audio decoded (of the inputs opened
                so far); None: only when stderr is a terminal.

        Raises:
            ValueError: an unknown decoder, or steps out of range (before any work is done).
        """
        transcripts = self.iter_transcripts(
            audio, decoder=decoder, steps=steps, sample_rate=sample_rate, progress=progress
        )
        return list(transcripts)

    def iter_transcripts(
        self,
        audio: Audio | Iterable[Audio],
        *,
        decoder: str | None = None,
        steps: int | None = None,
        sample_rate: int = 16000,
        progress: bool | None = False,
    ) -> Iterator[Transcript]:
        """As :meth:`transcribe`, but yields the transcripts as each group of inputs is done."""
        decoding = self._decoding(decoder, steps)
        inputs = [audio] if isinstance(audio, str | os.PathLike | np.ndarray | Tensor) else list(audio)
        return self._iter_groups(inputs, sample_rate, decoding, progress)

    def _iter_groups(
        self, inputs: list[Audio], sample_rate: int, decoding: _Decoding, progress: bool | None
    ) -> Iterator[Transcript]:
        disable = None if progress is None else not progress
        meter = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]"
        with tqdm(total=0.0, desc="transcribe", bar_format=meter, disable=disable, leave=False) as bar:
            for group in self._groups(inputs, sample_rate):
                yield from self._transcribe_group(group, decoding, bar)

    def _decoding(self, decoder: str | None, steps: int | None) -> _Decoding:
        decoder = self.default_decoder if decoder is None else decoder
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
        if decoder == "lm" and self.language_model is None:
            raise ValueError("the lm decoder needs a language model (a lexicon and an ARPA file)")
        if decoder in ("ctc", "lm"):
            if steps is not None:
                raise ValueError("steps apply to the imputer decoder only")
            return _Decoding(decoder, 1)
        steps = self.block_size if steps is None else steps
        if not 1 <= steps <= self.block_size:
            raise ValueError(
                f"steps must lie in [1, {self.block_size}] (this model's block size), got {steps}"
            )
        return _Decoding(decoder, steps)

    def _groups(self, inputs: list[Audio], sample_rate: int) -> Iterator[list[AudioSource | AudioError]]:
        """Consecutive inputs, opened, in groups of about ``group_seconds`` of audio."""
        group: list[AudioSource | AudioError] = []
        seconds = 0.0
        for index, item in enumerate(inputs):
            source = self._open(item, index, sample_rate)
            group.append(source)
            seconds += source.duration if isinstance(source, AudioSource) else 0.0
            if seconds >= self.options.group_seconds:
                yield group
                group, seconds = [], 0.0
        if group:
            yield group

    def _open(self, item: Audio, index: int, sample_rate: int) -> AudioSource | AudioError:
        name = f"<array {index}>" if isinstance(item, np.ndarray | Tensor) else None
        try:
            source = open_audio(item, sample_rate, name)
            self._check_long_enough(source.name, source.num_samples, source.sample_rate)
        except AudioError as exc:
            return exc
        return source

    def _check_long_enough(self, name: str, num_samples: int, sample_rate: int) -> None:
        """Raise AudioError unless ``num_samples`` give the network at least one encoder frame."""
        features = self.config.features
        samples = resampled_length(num_samples, sample_rate, features.sample_rate)
        frames = compute_num_frames(
            samples / features.sample_rate, features.frame_shift, features.sample_rate
        )
        if frames < MIN_INPUT_FRAMES:
            seconds, least = num_samples / sample_rate, MIN_INPUT_FRAMES * features.frame_shift
            raise AudioError(
                name, f"too short to transcribe ({seconds:.3f} s; about {least:.2f} s is the least)"
            )

    def _transcribe_group(
        self, sources: list[AudioSource | AudioError], decoding: _Decoding, bar: tqdm
    ) -> list[Transcript]:
        """Decode the windows of every input of a group, longest first, and stitch each input's;
        ``bar`` counts the seconds of the windows decoded."""
        errors = {i: s for i, s in enumerate(sources) if isinstance(s, AudioError)}
        plans = {i: self._plan(s) for i, s in enumerate(sources) if isinstance(s, AudioSource)}
        windows = [
            _Window(i, start, stop, (stop - start) / sources[i].sample_rate)
            for i, spans in plans.items()
            for start, stop in spans
        ]
        windows.sort(key=lambda w: w.seconds, reverse=True)
        bar.total += sum(w.seconds for w in windows)
        words: dict[tuple[int, int], list[Word]] = {}
        for batch in _batches(windows, self.options.batch_seconds):
            words.update(self._decode_windows(batch, sources, decoding, errors))
            bar.update(sum(w.seconds for w in batch))
        return [
            Transcript(errors[i].source, error=str(errors[i]))
            if i in errors
            else _stitched(source, plans[i], [words[i, start] for start, _ in plans[i]])
            for i, source in enumerate(sources)
        ]

    def _plan(self, source: AudioSource) -> list[tuple[int, int]]:
        window, overlap = self.options.window_seconds, self.options.overlap_seconds
        return plan_windows(source.num_samples, source.sample_rate, window, overlap)

    def _decode_windows(
        self,
        batch: list[_Window],
        sources: list[AudioSource | AudioError],
        decoding: _Decoding,
        errors: dict[int, AudioError],
    ) -> dict[tuple[int, int], list[Word]]:
        """Timed words of each window of ``batch`` whose input has not failed; a window that cannot
        be read records its input's error in ``errors``."""
        ready: list[tuple[_Window, Tensor]] = []
        for window in batch:
            if window.item in errors:
                continue
            try:
                ready.append((window, self._features(sources[window.item], window)))
            except AudioError as exc:
                errors[window.item] = exc
        if not ready:
            return {}
        alignments = self._align([features for _, features in ready], decoding)
        return {
            (w.item, w.start): alignment_words(
                alignment, self.tokenizer, self._frame_seconds, offset=w.start / sources[w.item].sample_rate
            )
            for (w, _), alignment in zip(ready, alignments, strict=True)
        }

    def _features(self, source: AudioSource, window: _Window) -> Tensor:
        rate = self.config.features.sample_rate
        samples = source.read(window.start, window.stop, rate)
        self._check_long_enough(source.name, len(samples), rate)  # a file may end before its header says
        return torch.from_numpy(self._extractor.extract(samples, rate))

    def _align(self, features: list[Tensor], decoding: _Decoding) -> list[list[int]]:
        """The final alignment of each window (encoder frames, -1 past its length)."""
        lengths = torch.tensor([f.size(0) for f in features], device=self.device)
        padded = pad_sequence(features, batch_first=True).to(self.device)
        with torch.inference_mode():
            if decoding.decoder == "lm":
                log_probs, frames = self.model(padded, lengths)
                return self.language_model.alignments(log_probs, frames)
            if decoding.decoder == "ctc":
                log_probs, frames = self.model(padded, lengths)
                alignment = greedy_alignment(log_probs, frames)
            else:
                alignment = decode_imputer(
                    self.model, padded, lengths, decoding.steps, self.block_size
                ).alignment
        return alignment.cpu().tolist()


def _stitched(source: AudioSource, spans: list[tuple[int, int]], words: list[list[Word]]) -> Transcript:
    """The transcript of one input from the words of its windows (``spans`` in samples)."""
    rate = source.sample_rate
    kept = stitch(words, [(start / rate, stop / rate) for start, stop in spans])
    return Transcript(source.name, " ".join(w.word for w in kept), kept, source.duration)


def _batches(windows: list[_Window], batch_seconds: float) -> Iterator[list[_Window]]:
    """Consecutive windows (longest first) whose padded length stays within ``batch_seconds``."""
    batch: list[_Window] = []
    for window in windows:
        if batch and (len(batch) + 1) * batch[0].seconds > batch_seconds:
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"not a device: {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    return device


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    options: TranscribeOptions | None = None,
    lexicon: str | os.PathLike | None = None,
    arpa: str | os.PathLike | None = None,
    lm_weights: LMWeights | None = None,
    bf16: bool = False,
) -> Transcriber:
    """Load a packaged ``model.pt`` (weights-only), or its ONNX export (``imputer-asr export``, run by
    onnxruntime on the CPU), into a :class:`Transcriber`; with ``lexicon`` (and optionally an
    ``arpa`` word LM, from ``imputer-asr lm``) it decodes by lexicon-constrained beam search by
    default (``lm_weights`` from ``imputer-asr tune-lm``). ``bf16``: the network under bfloat16
    autocast where the device has it (a PyTorch model only).

    Raises:
        ValueError: the file is missing, corrupt or not a packaged model or export; the device is
            unavailable; the lexicon or LM is missing or unreadable.
    """
    packaged = load_packaged_or_onnx(Path(path))
    language_model = None
    if lexicon is not None:
        from imputer_asr.decoding.lm_search import LexiconBeamSearch, LMWeights

        weights = lm_weights or LMWeights()
        language_model = LexiconBeamSearch(
            packaged.tokenizer, Path(lexicon), None if arpa is None else Path(arpa), weights
        )
    elif arpa is not None:
        raise ValueError("an ARPA language model needs a lexicon (the words the search may write)")
    return Transcriber(packaged, device, options, language_model, bf16)

"""Sentencepiece BPE tokenizer that owns the special ids of the model.

Output classes are the sentencepiece ids: id 0 is the CTC blank (sentencepiece's padding piece,
renamed ``<blk>``), id 1 is ``<unk>``, the pieces follow. The Imputer's ``[MASK]`` token is one past
the last class (``mask_id == vocab_size``): it is an input token of the alignment embedding, never
an output class. Everything else asks the tokenizer for these ids instead of assuming them.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> texts = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP"] * 20
>>> tok = train_tokenizer(texts, d / "bpe.model", vocab_size=40)
>>> tok.decode(tok.encode("THE CAT RAN"))
'THE CAT RAN'
>>> (tok.blank_id, tok.mask_id == tok.vocab_size)
(0, True)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from imputer_asr.files import write_bytes_atomic

__all__ = ["Tokenizer", "train_tokenizer"]

BLANK_PIECE = "<blk>"
UNK_PIECE = "<unk>"


class Tokenizer:
    """Text <-> ids with a fixed blank (0) and a [MASK] id outside the output classes."""

    def __init__(self, model_proto: bytes) -> None:
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except RuntimeError as exc:
            raise ValueError(f"not a sentencepiece model: {exc}") from None
        if self._sp.id_to_piece(0) != BLANK_PIECE:
            raise ValueError(f"sentencepiece model must have {BLANK_PIECE} at id 0")
        self.model_proto = model_proto

    @classmethod
    def from_file(cls, path: Path) -> Tokenizer:
        try:
            proto = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read tokenizer {path}: {exc.strerror}") from None
        try:
            return cls(proto)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        """Number of output classes, blank included."""
        return self._sp.get_piece_size()

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; blank and [MASK] ids are dropped."""
        keep = [i for i in ids if 0 < i < self.vocab_size]
        return self._sp.decode(keep)

    def id_to_piece(self, idx: int) -> str:
        if idx == self.mask_id:
            return "[MASK]"
        return self._sp.id_to_piece(idx)


def train_tokenizer(
    texts: Iterable[str], model_path: Path, vocab_size: int = 256, character_coverage: float = 1.0
) -> Tokenizer:
    """Train a BPE model on ``texts`` and write it to ``model_path`` (``.model``)."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text("\n".join(texts) + "\n")
        prefix = Path(tmp) / "bpe"
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            pad_id=0,
            pad_piece=BLANK_PIECE,
            unk_id=1,
            unk_piece=UNK_PIECE,
            bos_id=-1,
            eos_id=-1,
            minloglevel=2,
        )
        proto = prefix.with_suffix(".model").read_bytes()
    write_bytes_atomic(model_path, proto)
    return Tokenizer(proto)

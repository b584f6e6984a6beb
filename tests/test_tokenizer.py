"""Tests for imputer_asr.data.tokenizer: a throwaway BPE trained in tmp_path, round trips, special ids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm

from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer

WORDS = (
    "THE A CAT DOG SAT RAN ON IN UNDER OVER MAT PARK HOUSE GREEN RED SMALL BIG QUICKLY SLOWLY "
    "BIRD SANG SONG MORNING EVENING WATER RIVER STONE TREE LIGHT NIGHT WIND WALKED JUMPED"
).split()
VOCAB_SIZE = 120


def _sentences(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    train = _sentences(rng, 300)
    seen = set(train)
    held_out = [s for s in _sentences(rng, 100) if s not in seen]
    assert len(held_out) > 50
    return train, held_out


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, corpus: tuple[list[str], list[str]]
) -> tuple[Tokenizer, Path]:
    path = tmp_path_factory.mktemp("bpe") / "bpe.model"
    return train_tokenizer(corpus[0], path, vocab_size=VOCAB_SIZE), path


def test_training_writes_only_the_model(trained: tuple[Tokenizer, Path]) -> None:
    tok, path = trained
    assert sorted(p.name for p in path.parent.iterdir()) == ["bpe.model"]
    assert path.read_bytes() == tok.model_proto


def test_special_ids(trained: tuple[Tokenizer, Path]) -> None:
    tok, _ = trained
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.blank_id == 0 and tok.id_to_piece(0) == "<blk>"
    assert tok.unk_id == 1 and tok.id_to_piece(1) == "<unk>"
    assert tok.mask_id == tok.vocab_size
    assert tok.id_to_piece(tok.mask_id) == "[MASK]"
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert len(set(pieces)) == tok.vocab_size
    assert "[MASK]" not in pieces


def test_round_trip_on_held_out_sentences(
    trained: tuple[Tokenizer, Path], corpus: tuple[list[str], list[str]]
) -> None:
    tok, _ = trained
    for text in corpus[1]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text


def test_encoded_ids_are_output_classes_other_than_blank(
    trained: tuple[Tokenizer, Path], corpus: tuple[list[str], list[str]]
) -> None:
    tok, _ = trained
    texts = corpus[0] + corpus[1] + ["ZEBRA QUIZ 42 #?", "the cat"]  # unseen characters -> <unk>
    for ids in tok.encode_batch(texts):
        assert ids and all(0 < i < tok.vocab_size for i in ids)
    assert tok.unk_id in tok.encode("the cat")


def test_encode_batch_matches_encode(
    trained: tuple[Tokenizer, Path], corpus: tuple[list[str], list[str]]
) -> None:
    tok, _ = trained
    texts = corpus[1][:20]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_decode_drops_blank_and_mask(
    trained: tuple[Tokenizer, Path], corpus: tuple[list[str], list[str]]
) -> None:
    tok, _ = trained
    rng = random.Random(1)
    for text in corpus[1][:20]:
        noisy: list[int] = []
        for i in tok.encode(text):
            noisy += [rng.choice([tok.blank_id, tok.mask_id]) for _ in range(rng.randint(0, 2))]
            noisy.append(i)
        noisy += [tok.blank_id, tok.mask_id]
        assert tok.decode(noisy) == text


def test_from_file_round_trip(trained: tuple[Tokenizer, Path], corpus: tuple[list[str], list[str]]) -> None:
    tok, path = trained
    loaded = Tokenizer.from_file(path)
    assert loaded.model_proto == tok.model_proto
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode_batch(corpus[1]) == tok.encode_batch(corpus[1])


def test_from_file_missing_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.model"
    with pytest.raises(ValueError) as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a sentencepiece model\n", bytes(range(256)) * 4],
    ids=["empty", "text", "random-bytes"],
)
def test_from_file_not_sentencepiece_names_the_file(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bogus.model"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value)


def test_from_file_rejects_model_without_blank_at_zero(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    """A plain sentencepiece model (``<unk>`` at id 0) would silently make <unk> the CTC blank."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join(corpus[0]) + "\n")
    prefix = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), model_type="bpe", vocab_size=60, minloglevel=2
    )
    path = prefix.with_suffix(".model")
    with pytest.raises(ValueError) as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value) and "<blk>" in str(info.value)

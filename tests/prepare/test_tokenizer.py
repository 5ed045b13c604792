"""The BPE tokenizer: training, save/load with a content hash, BOS, and raw token byte lengths for bpb."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from prepare.errors import PrepareError
from prepare.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

# Many multi-byte characters: 2-byte Latin/Greek/Cyrillic, 3-byte CJK/kana, 4-byte emoji.
ALPHABET = (
    list("abcdefghij éèêàüöäßñçøåæœ")
    + list("αβγδεζηθλμπσω")
    + list("абвгдежзиклмнопрст")
    + list("日本語のテキスト漢字東京大学生")
    + ["😀", "🚀", "🎉"]
)


def corpus(seed: int, n_docs: int = 300) -> list[str]:
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 7)))

    return [" ".join(word() for _ in range(40)) + ". The year 2024 was fine." for _ in range(n_docs)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(corpus(0), 512)


def test_vocabulary_size_and_bos(tok):
    assert tok.vocab_size == 512 == tok.enc.n_vocab
    assert tok.bos_id == 511
    assert tok.enc.decode([tok.bos_id]) == "<|bos|>"
    # text that spells the special token is plain text, never the BOS id
    ids = tok.encode("hello <|bos|> world")
    assert tok.bos_id not in ids
    assert tok.decode(ids) == "hello <|bos|> world"


def test_roundtrip_and_batch(tok):
    texts = corpus(1, 5) + ["", "ascii only\n\n  spaces", "unseen: 龍 Ωmega ✓"]
    batch = tok.encode_batch(texts, num_threads=2)
    assert len(batch) == len(texts)
    for text, ids in zip(texts, batch, strict=True):
        assert ids == tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.bos_id for i in ids)
    # training learned merges: well under one token per byte on text like the training text
    sample = corpus(2, 20)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(sample))
    assert n_tokens < 0.6 * sum(len(t.encode()) for t in sample)


def test_save_load_keeps_tokens_and_hash(tok, tmp_path):
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.hash
    back = Tokenizer.load(tmp_path)
    assert back.hash == tok.hash
    assert back.vocab_size == tok.vocab_size and back.bos_id == tok.bos_id
    text = corpus(3, 1)[0]
    assert back.encode(text) == tok.encode(text)
    assert np.array_equal(back.token_bytes(), tok.token_bytes())
    # the file is readable JSON with base64 tokens, the pattern and the special token
    data = json.loads(path.read_text())
    assert data["special_tokens"] == {"<|bos|>": 511}
    assert len(data["mergeable_ranks"]) == 511 and data["pattern"] == tok.pattern


def test_hash_depends_on_training_text(tok):
    other = train_tokenizer(corpus(7), 512)
    assert other.hash != tok.hash
    assert train_tokenizer(corpus(0), 512).hash == tok.hash  # training is deterministic


def test_load_tokenizer_defaults_to_the_runs_data(tok, tmp_path, monkeypatch):
    tok.save(tmp_path / "data")
    monkeypatch.setenv("EVOLVE_DATA", str(tmp_path / "data"))
    assert load_tokenizer().hash == tok.hash
    assert load_tokenizer(tmp_path / "data").hash == tok.hash


def test_missing_or_corrupt_tokenizer_says_what_to_do(tok, tmp_path):
    with pytest.raises(PrepareError, match="evolve prepare"):
        Tokenizer.load(tmp_path / "nowhere")
    tok.save(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"format": 1, "pattern": "x"}')
    with pytest.raises(PrepareError, match="corrupt"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(PrepareError, match="corrupt"):
        Tokenizer.load(tmp_path)


def test_too_little_text_for_the_vocabulary_is_an_error():
    with pytest.raises(PrepareError, match="more"):
        train_tokenizer(["ab ab ab"], 1024)
    with pytest.raises(PrepareError, match="at least"):
        train_tokenizer(corpus(0, 10), 200)


def test_token_bytes_are_raw_bytes_not_decode_reencode(tok):
    """autoresearch's `len(decode([t]).encode())` counts a cut UTF-8 character as U+FFFD (3 bytes)."""
    ours = tok.token_bytes()
    assert ours.dtype == np.int32 and len(ours) == tok.vocab_size
    assert ours[tok.bos_id] == 0
    reencoded = np.array([len(tok.decode([t]).encode()) for t in range(tok.bos_id)])

    def is_utf8(b: bytes) -> bool:
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    fragments = [t for t in range(tok.bos_id) if not is_utf8(tok.token_to_bytes(t))]
    learned_fragments = [t for t in fragments if t >= 256]  # merges, not just single bytes
    assert learned_fragments, "a tokenizer trained on multi-byte text learns partial-character tokens"
    differ = np.nonzero(reencoded != ours[: tok.bos_id])[0]
    assert set(differ) == set(fragments)  # exactly the partial-UTF-8 tokens are miscounted...
    assert all(ours[t] == len(tok.token_to_bytes(t)) for t in range(tok.bos_id))  # ...and ours is exact

    # On a text whose characters were rare in training, tokens are fragments: re-encoding
    # overcounts the bytes (flattering bpb), while ours adds up to the true UTF-8 length.
    text = corpus(5, 1)[0] + " 龍鳳 Ωψ ѣѳ 🦊🌍 ĀĒĪ"
    ids = tok.encode(text)
    assert b"".join(tok.token_to_bytes(i) for i in ids) == text.encode()
    assert int(ours[ids].sum()) == len(text.encode())
    assert int(reencoded[ids].sum()) > len(text.encode())

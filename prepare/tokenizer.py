"""The BPE tokenizer: trained with rustbpe, used as a `tiktoken.Encoding`, saved as `tokenizer.json`.

The vocabulary is the 256 single bytes, the learned merges, then one special token, `<|bos|>`,
which begins every document. `token_bytes()` gives the number of raw bytes behind each token,
read from the merge table itself: that is the denominator of bits per byte, so it must not be
guessed by decoding a token to text and re-encoding it (a token that is half of a UTF-8
character decodes to U+FFFD, three bytes, and would make every model look better than it is).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tiktoken

from .errors import PrepareError
from .profiles import dataset_dir, get_profile

FILENAME = "tokenizer.json"
FORMAT = 1
BOS = "<|bos|>"
SPECIAL_TOKENS = (BOS,)

# GPT-4's split pattern with numbers split in runs of at most two digits (as nanochat and
# autoresearch do: with a small vocabulary, three-digit number tokens waste merges).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class Tokenizer:
    """A BPE vocabulary of `vocab_size` tokens (special tokens included) wrapping `tiktoken`.

    `.enc` is the `tiktoken.Encoding`; `.bos_id` the id of `<|bos|>`; `.hash` the sha256 of the
    saved `tokenizer.json`, which is what the data manifest and every score refer to."""

    def __init__(self, ranks: list[bytes], pattern: str = SPLIT_PATTERN) -> None:
        if len(set(ranks)) != len(ranks):
            raise PrepareError("tokenizer has duplicate tokens; delete it and run `evolve prepare` again")
        self._ranks = list(ranks)
        self.pattern = pattern
        specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(
            name="autoevolve-bpe",
            pat_str=pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(ranks)},
            special_tokens=specials,
            explicit_n_vocab=len(ranks) + len(specials),
        )
        self.bos_id: int = specials[BOS]
        self.vocab_size: int = len(ranks) + len(specials)
        self._content = _serialize(self._ranks, pattern, specials)
        self.hash: str = hashlib.sha256(self._content).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, hash={self.hash[:16]})"

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without a BOS; special-token text in it is encoded as plain text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """`encode` of each text, in parallel threads (no BOS added)."""
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (invalid UTF-8, e.g. a cut multi-byte character, becomes U+FFFD)."""
        return self.enc.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """int32 array of length `vocab_size`: the raw byte length of each token, 0 for specials.

        bits per byte = nats / (ln 2 * sum of token_bytes over the scored targets)."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        lengths[: len(self._ranks)] = [len(token) for token in self._ranks]
        return lengths

    def token_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (b"" for a special token)."""
        return self._ranks[token_id] if 0 <= token_id < len(self._ranks) else b""

    # --- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` into `directory` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILENAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self._content)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read `tokenizer.json` from `directory` (PrepareError if missing or corrupt)."""
        path = Path(directory) / FILENAME
        if not path.is_file():
            raise PrepareError(f"no tokenizer at {path}; run `evolve prepare --profile {_profile_hint()}`")
        try:
            data = json.loads(path.read_bytes())
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            ranks = [base64.b64decode(token, validate=True) for token in data["mergeable_ranks"]]
            pattern = data["pattern"]
            specials = data["special_tokens"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PrepareError(
                f"tokenizer at {path} is corrupt ({e}); delete {path.parent} and run `evolve prepare` again"
            ) from None
        tokenizer = cls(ranks, pattern)
        if specials != {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}:
            raise PrepareError(
                f"tokenizer at {path} has special tokens {specials}, expected {list(SPECIAL_TOKENS)}; "
                "run `evolve prepare` again"
            )
        return tokenizer


def _serialize(ranks: list[bytes], pattern: str, specials: dict[str, int]) -> bytes:
    # Canonical JSON (sorted keys, fixed separators) so that the hash depends only on the content.
    data = {
        "format": FORMAT,
        "pattern": pattern,
        # index in this list = token id = merge rank
        "mergeable_ranks": [base64.b64encode(token).decode("ascii") for token in ranks],
        "special_tokens": specials,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _profile_hint() -> str:
    try:
        return get_profile().name
    except PrepareError:
        return "h100"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (`<|bos|>` included) on `texts` with rustbpe."""
    import rustbpe

    num_merged = vocab_size - len(SPECIAL_TOKENS)
    if num_merged < 256:
        raise PrepareError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), num_merged, pattern=SPLIT_PATTERN)
    pairs = sorted(bpe.get_mergeable_ranks(), key=lambda pair: pair[1])
    if [rank for _, rank in pairs] != list(range(len(pairs))):
        raise PrepareError("rustbpe returned non-contiguous token ranks; upgrade rustbpe")
    if len(pairs) < num_merged:
        raise PrepareError(
            f"the training text only supports {len(pairs) + len(SPECIAL_TOKENS)} tokens, "
            f"{vocab_size} asked; give the tokenizer more (or more varied) text"
        )
    return Tokenizer([bytes(token) for token, _ in pairs], bpe.get_pattern())


def load_tokenizer(data_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a prepared dataset; by default the one the current run uses
    (`EVOLVE_DATA`, else the dataset of `EVOLVE_PROFILE`)."""
    return Tokenizer.load(data_dir if data_dir is not None else dataset_dir(get_profile()))

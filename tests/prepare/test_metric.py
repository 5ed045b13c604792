"""evaluate_bpb: agreement with a float64 brute force, the uniform-model identity, BOS exclusion, invariances, causality probes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prepare.errors import PrepareError
from prepare.metric import evaluate_bpb
from prepare.profiles import get_profile
from prepare.tokenizer import train_tokenizer

V = 300  # vocabulary of the test tokenizer; BOS is the last id
BOS = V - 1
T = 16  # sequence length of the test profile


@pytest.fixture(scope="module")
def token_bytes(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real trained tokenizer (saved once); its byte lengths vary from 1 to several bytes."""
    text = [f"the {w} of {i} über café naïve 日本 {i * 7}" for i in range(300) for w in ("cat", "dog")]
    tok = train_tokenizer(text, V)
    assert tok.bos_id == BOS
    directory = tmp_path_factory.mktemp("tok")
    tok.save(directory)
    return directory, tok.token_bytes()


def write_val(data_dir: Path, docs: list[np.ndarray], token_bytes) -> None:
    """The documented layout (val.bin uint16, val.idx int64 starts + total), the tokenizer, and
    manifest.json written last."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate(docs).astype("<u2")
    tokens.tofile(data_dir / "val.bin")
    np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype("<i8").tofile(data_dir / "val.idx")
    (data_dir / "tokenizer.json").write_bytes((token_bytes[0] / "tokenizer.json").read_bytes())
    stats = {"documents": len(docs), "tokens": len(tokens), "bytes": tokens.nbytes,
             "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}  # fmt: skip
    manifest = {"profile": "test", "source": "test", "source_info": {}, "tokenizer_hash": "0" * 64,
                "vocab_size": V, "bos_id": BOS, "splits": {"val": stats}, "fingerprint": "f" * 64,
                "created": "2025-01-01T00:00:00+00:00"}  # fmt: skip
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def docs_of_lengths(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for n in lengths:
        doc = rng.integers(0, BOS, n, dtype=np.uint16)
        doc[0] = BOS
        docs.append(doc)
    return docs


def score(model, data_dir: Path, eval_tokens: int, **kw) -> float:
    """evaluate_bpb on the test layout (rows of T tokens), probes seeded so runs repeat."""
    kw.setdefault("seed", 0)
    return evaluate_bpb(model, data_dir, T, eval_tokens, **kw).val_bpb


class TinyLM(torch.nn.Module):
    """A small random causal model: embeddings, a running mean over the prefix, a projection."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, 24)
        self.out = torch.nn.Linear(48, V)
        self.dtype = dtype
        self.calls: list[tuple[bool, bool]] = []  # (training, grad enabled) at each call
        self.rows_seen = 0

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        self.rows_seen += x.shape[0]
        h = self.emb(x)
        prefix = h.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[None, :, None]
        return (3 * self.out(torch.cat([h, prefix], -1))).to(self.dtype)


class ConstantLM(torch.nn.Module):
    """The same logits at every position (no parameters)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(*x.shape, len(self.logits))


def brute_force_bpb(model, rows: np.ndarray, eval_tokens: int, token_bytes: np.ndarray) -> float:
    """Score target by target in float64: sum of -log p / (ln 2 * bytes), BOS and later targets skipped."""
    nats, nbytes, counted = 0.0, 0, 0
    for row in rows:
        with torch.no_grad():
            logits = model(torch.from_numpy(row[:-1].astype(np.int64))[None])[0].double()
        for t in range(len(row) - 1):
            if counted == eval_tokens:
                break
            counted += 1
            target = int(row[t + 1])
            if token_bytes[target] > 0:
                nats -= float(torch.log_softmax(logits[t], -1)[target])
                nbytes += int(token_bytes[target])
    assert counted == eval_tokens
    return nats / (math.log(2) * nbytes)


@pytest.fixture
def one_doc_per_row(tmp_path, token_bytes) -> tuple[Path, list[np.ndarray]]:
    """Documents of exactly one row (T + 1 tokens): the scored rows are the documents in file order."""
    docs = docs_of_lengths([T + 1] * 12)
    write_val(tmp_path / "a", docs, token_bytes)
    return tmp_path / "a", docs


@pytest.fixture
def two_docs_per_row(tmp_path, token_bytes) -> tuple[Path, list[np.ndarray]]:
    """Documents of 10 and 7 tokens alternating: each row is one pair, with a BOS target in the middle."""
    docs = docs_of_lengths([10, 7] * 12, seed=1)
    write_val(tmp_path / "b", docs, token_bytes)
    return tmp_path / "b", docs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eval_tokens", [5 * T, 5 * T + 7])
def test_agrees_with_float64_brute_force(one_doc_per_row, token_bytes, dtype, eval_tokens):
    data_dir, docs = one_doc_per_row
    model = TinyLM(dtype)
    rows = np.stack(docs[: math.ceil(eval_tokens / T)])
    expected = brute_force_bpb(model, rows, eval_tokens, token_bytes[1])
    got = score(model, data_dir, eval_tokens)
    assert got == pytest.approx(expected, rel=1e-6)
    assert 2 < got < 20  # a random model over 300 tokens: several bits per byte


def test_uniform_model_scores_log2_vocab_per_mean_token_bytes(two_docs_per_row, token_bytes):
    data_dir, docs = two_docs_per_row
    eval_tokens = 4 * T
    got = score(ConstantLM(torch.zeros(V)), data_dir, eval_tokens)
    targets = np.concatenate([np.concatenate([docs[2 * i], docs[2 * i + 1]])[1:] for i in range(4)])
    assert len(targets) == eval_tokens and (targets == BOS).sum() == 4
    counted = token_bytes[1][targets]
    counted = counted[counted > 0]
    assert len(counted) == eval_tokens - 4
    assert got == pytest.approx(math.log2(V) / counted.mean(), rel=1e-6)
    assert got == pytest.approx(math.log2(V) * len(counted) / counted.sum(), rel=1e-6)


def test_bos_targets_are_not_scored(two_docs_per_row, token_bytes):
    """A model that rules out BOS would pay 30 nats on each BOS target if they counted."""
    data_dir, docs = two_docs_per_row
    logits = torch.zeros(V)
    logits[BOS] = -30.0
    got = score(ConstantLM(logits), data_dir, 4 * T)
    targets = np.concatenate([np.concatenate([docs[2 * i], docs[2 * i + 1]])[1:] for i in range(4)])
    counted = token_bytes[1][targets[targets != BOS]]
    per_token = math.log(V - 1 + math.exp(-30.0))
    assert got == pytest.approx(per_token * len(counted) / (math.log(2) * counted.sum()), rel=1e-6)


def test_result_does_not_depend_on_batch_size_or_probe_seed(two_docs_per_row):
    data_dir, _ = two_docs_per_row
    model = TinyLM()
    reference = score(model, data_dir, 7 * T + 3)
    for batch_size in (1, 3, 64):
        assert score(model, data_dir, 7 * T + 3, batch_size=batch_size) == pytest.approx(reference, rel=1e-12)
    assert score(model, data_dir, 7 * T + 3, seed=7) == pytest.approx(reference, rel=1e-12)
    # a different eval_tokens scores different targets
    assert score(model, data_dir, 5 * T) != pytest.approx(reference, rel=1e-6)


def test_a_static_batch_graph_is_fed_padded_batches(one_doc_per_row):
    data_dir, _ = one_doc_per_row
    model = TinyLM()
    reference = score(model, data_dir, 5 * T)
    assert score(model, data_dir, 5 * T, static_batch=4, batch_size=3) == pytest.approx(reference, rel=1e-12)


def test_wrong_logits_shape_is_reported(one_doc_per_row):
    data_dir, _ = one_doc_per_row
    with pytest.raises(PrepareError, match="logits of shape"):
        score(ConstantLM(torch.zeros(V - 1)), data_dir, 2 * T)


def test_too_small_validation_split_is_an_error(one_doc_per_row):
    data_dir, docs = one_doc_per_row
    with pytest.raises(PrepareError, match="fills only 12 of the 13 rows"):
        score(TinyLM(), data_dir, (len(docs) + 1) * T)
    with pytest.raises(PrepareError, match="evolve prepare"):
        score(TinyLM(), data_dir.parent / "missing", T)


class Peeker(torch.nn.Module):
    """TinyLM that also reads the next token at a share of positions (every `every`-th one)."""

    def __init__(self, every: int):
        super().__init__()
        self.base, self.every = TinyLM(), every
        self.cheat = torch.nn.Embedding(V, V)
        with torch.no_grad():
            self.cheat.weight.copy_(torch.eye(V) * 20)

    def forward(self, x):
        logits = self.base(x)
        nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
        where = (torch.arange(x.shape[1]) % self.every == 0)[None, :, None]
        return logits + self.cheat(nxt) * where


class Hider(torch.nn.Module):
    """Peeks only in the second half of each row: the old probe (change the second half, compare the
    first) never saw it."""

    def __init__(self):
        super().__init__()
        self.base = TinyLM()

    def forward(self, x):
        logits = self.base(x)
        half = x.shape[1] // 2
        peek = torch.nn.functional.one_hot(torch.cat([x[:, 1:], x[:, -1:]], 1), V).float() * 20
        return logits + peek * (torch.arange(x.shape[1]) >= half)[None, :, None]


def test_an_honest_model_passes_the_causality_probes_exactly(two_docs_per_row):
    data_dir, _ = two_docs_per_row
    result = evaluate_bpb(TinyLM(), data_dir, T, 12 * T, probes=12, seed=3)
    assert result.probes == 12 and result.probe_max_diff == 0.0 and not result.leaks_future


@pytest.mark.parametrize(
    "model", [Peeker(every=1), Peeker(every=4), Hider()], ids=["everywhere", "a quarter", "second half"]
)
def test_a_model_that_reads_later_tokens_is_caught(two_docs_per_row, model):
    data_dir, _ = two_docs_per_row
    cheat = evaluate_bpb(model, data_dir, T, 8 * T, probes=12, seed=1)
    honest = score(TinyLM(), data_dir, 8 * T)
    assert cheat.val_bpb < honest  # it would have scored better ...
    assert cheat.leaks_future and cheat.probe_max_diff > 1  # ... and the probes see why


def test_uniform_model_on_the_prepared_tiny_dataset(use_tiny_data):
    """Real tokenizer, real validation split: eval_tokens targets, BOS excluded, raw byte lengths."""
    from prepare.metric import validation_rows
    from prepare.tokenizer import load_tokenizer

    profile = get_profile("tiny")
    tok = load_tokenizer()
    got = evaluate_bpb(
        ConstantLM(torch.zeros(tok.vocab_size)), use_tiny_data, profile.seq_len, profile.eval_tokens
    ).val_bpb
    rows = validation_rows(use_tiny_data, profile.seq_len, profile.eval_tokens)
    targets = rows[:, 1:].reshape(-1)[: profile.eval_tokens]
    counted = tok.token_bytes()[targets]
    counted = counted[counted > 0]
    assert len(counted) == profile.eval_tokens - int((targets == tok.bos_id).sum())
    assert got == pytest.approx(math.log2(tok.vocab_size) / counted.mean(), rel=1e-6)
    assert 1.5 < got < 5  # ~3-4 bytes per token of English text and code

"""The fixed metric: bits per byte on the validation split, and the check that the model is causal.

    val_bpb = sum of cross-entropy (nats) over scored targets / (ln 2 * their total bytes)

A target is scored when its token stands for at least one byte (so BOS targets are not), and
exactly `eval_tokens` targets are read: the validation documents in file order, packed
BOS-aligned into rows like the training loader but never shuffled, so every run, seed, batch
size and world size scores the very same tokens. Byte counts are the tokens' raw byte lengths
(`Tokenizer.token_bytes()`), which makes the number comparable across vocabularies.

This runs in the evaluator (prepare.evaluate), a process the training run never touched, on the
model it handed over (prepare.artifact): a pure function of the token ids, so it cannot tell a
scored row from a probe. Causality is checked on probe rows: a scored row's tokens from a random
cut on are replaced with another row's, and the log-probabilities before the cut must not move.
A model that reads later tokens at a share p of positions is caught by each probe with
probability about p (see docs/SECURITY.md for the numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .artifact import scoring_precision
from .dataloader import BestFitPacker, Exhausted, gather
from .errors import PrepareError
from .shards import open_split
from .tokenizer import load_tokenizer

CE_CHUNK_ELEMENTS = 2**26  # float32 logits scored at once (256 MB), bounds the metric's own memory
PROBE_TOLERANCE = 1e-3  # nats: how far a log-probability before the cut may move on a probe row


@dataclass(frozen=True)
class Score:
    """What the evaluator measured: the score, what it covered, and the causality probes."""

    val_bpb: float
    eval_tokens: int
    seq_len: int
    probes: int  # probe rows compared
    probe_max_diff: float  # largest change of a log-probability before a cut (nats)
    leaks_future: bool

    def to_dict(self) -> dict:
        return {
            "val_bpb": self.val_bpb,
            "eval_tokens": self.eval_tokens,
            "seq_len": self.seq_len,
            "probes": self.probes,
            "probe_max_diff": self.probe_max_diff,
            "leaks_future": self.leaks_future,
        }


def validation_rows(data_dir: str | Path, seq_len: int, eval_tokens: int) -> np.ndarray:
    """The uint16 rows (n_rows, seq_len + 1) that `evaluate_bpb` scores, always the same ones."""
    if seq_len < 1 or eval_tokens < 1:
        raise PrepareError(f"seq_len and eval_tokens must be >= 1, got {seq_len} and {eval_tokens}")
    split = open_split(data_dir, "val")
    tokens, offsets = split.tokens, split.offsets
    n_rows = math.ceil(eval_tokens / seq_len)
    packer = BestFitPacker(offsets, iter(range(len(offsets) - 1)), seq_len + 1)
    segments = []
    try:
        for _ in range(n_rows):
            segments.append(packer.rows(1))
    except Exhausted:
        raise PrepareError(
            f"the validation split in {data_dir} ({len(offsets) - 1:,} documents, {len(tokens):,} tokens) "
            f"fills only {len(segments)} of the {n_rows} rows of {seq_len + 1} tokens that {eval_tokens:,} "
            "scored targets need (rows start at a document and drop what overflows them); "
            "prepare more, or shorter, validation documents"
        ) from None
    starts, lengths = (np.concatenate(parts) for parts in zip(*segments, strict=True))
    return gather(tokens, starts, lengths).reshape(n_rows, seq_len + 1)


def _agrees(ce: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """Cross-entropy as F computed it matches logsumexp minus the target's logit."""
    direct = torch.logsumexp(logits, -1) - logits.gather(-1, targets[:, None]).squeeze(-1)
    finite = torch.isfinite(ce) & torch.isfinite(direct)
    close = (ce[finite] - direct[finite]).abs() <= 1e-3 + 1e-3 * direct[finite].abs()
    return bool(close.all()) and bool((torch.isfinite(ce) == torch.isfinite(direct)).all())


class _Forward:
    """Calls the model on batches of rows, padding to the one batch size a static graph takes."""

    def __init__(self, model, device: torch.device, vocab: int, static_batch: int | None):
        self.model, self.device, self.vocab, self.static = model, device, vocab, static_batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if self.static is not None and n != self.static:
            if n > self.static:
                return torch.cat([self(x[i : i + self.static]) for i in range(0, n, self.static)])
            x = torch.cat([x, x[:1].expand(self.static - n, -1)])
        with torch.no_grad(), scoring_precision(self.device):
            logits = self.model(x)
        if (
            not isinstance(logits, torch.Tensor)
            or logits.ndim != 3
            or logits.shape[:2] != x.shape
            or logits.shape[2] < self.vocab
        ):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise PrepareError(
                f"model(x) must return logits of shape (B, T, V>={self.vocab}) for x of shape {tuple(x.shape)}, got {got}"
            )
        return logits[:n]


def evaluate_bpb(
    model,
    data_dir: str | Path,
    seq_len: int,
    eval_tokens: int,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    static_batch: int | None = None,
    probes: int | None = None,
    seed: int | None = None,
) -> Score:
    """Bits per byte of `model` on exactly `eval_tokens` validation targets (lower is better).

    `model(x)` takes int64 token ids (B, T) on `device` and returns logits (B, T, V), V >= the
    vocabulary; it runs under bf16 autocast on CUDA, in float32 on the CPU; cross-entropy is
    computed here in float32 and summed in float64. `batch_size` (rows per forward; default about
    256K tokens on a GPU, 16K on a CPU) changes speed and memory, never the result. `probes`
    causality probe rows (default: a 16th of the rows, at least 32) are drawn with `seed`
    (default: fresh randomness, so a model cannot know where they fall)."""
    device = torch.device(device)
    rows = validation_rows(data_dir, seq_len, eval_tokens)
    token_bytes = load_tokenizer(data_dir).token_bytes()
    vocab = len(token_bytes)
    if int(rows.max()) >= vocab:
        raise PrepareError(
            f"validation tokens in {data_dir} exceed the tokenizer's vocabulary; run `evolve prepare` again"
        )
    if batch_size is None:
        batch_size = max(1, (2**18 if device.type == "cuda" else 2**14) // seq_len)
    forward = _Forward(model, device, vocab, static_batch)
    scored_per_row = np.clip(eval_tokens - np.arange(len(rows)) * seq_len, 0, seq_len)
    bytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    positions = torch.arange(seq_len, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    consistent = True
    for begin in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[begin : begin + batch_size].astype(np.int64)).to(device)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        limit = torch.from_numpy(scored_per_row[begin : begin + batch_size]).to(device)
        logits = forward(x)
        target_bytes = bytes_table[y] * (positions[None, :] < limit[:, None])
        chunk = max(1, CE_CHUNK_ELEMENTS // (seq_len * logits.shape[2]))
        for r in range(0, len(x), chunk):
            part = logits[r : r + chunk].float()
            ce = F.cross_entropy(part.flatten(0, 1), y[r : r + chunk].flatten(), reduction="none")
            if begin == 0 and r == 0:
                consistent = _agrees(ce, part.flatten(0, 1), y[r : r + chunk].flatten())
            weight = target_bytes[r : r + chunk].flatten()
            nats += torch.where(
                weight > 0, ce.double(), 0.0
            ).sum()  # where, not *: an unscored inf must not leak in
        nbytes += target_bytes.sum()
        del logits
    if not consistent:  # the evaluator's own torch: only a broken installation gets here
        raise PrepareError("cross-entropy disagrees with logsumexp on this installation of torch")
    value = float(nats) / (math.log(2) * float(nbytes))
    count = probes if probes is not None else max(32, len(rows) // 16)
    diff = _probe(forward, rows, min(count, len(rows)), max(1, batch_size // 2), device, seed)
    return Score(
        val_bpb=value,
        eval_tokens=int(eval_tokens),
        seq_len=int(seq_len),
        probes=min(count, len(rows)),
        probe_max_diff=diff,
        leaks_future=not diff <= PROBE_TOLERANCE,  # NaN counts as a leak
    )


def _probe(forward: _Forward, rows: np.ndarray, count: int, pairs: int, device, seed: int | None) -> float:
    """The largest change of a log-probability before the cut, over `count` probe rows."""
    if count < 1 or len(rows) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    T = rows.shape[1] - 1
    chosen = rng.choice(len(rows), size=count, replace=False)
    donors = (chosen + rng.integers(1, len(rows), size=count)) % len(rows)
    cuts = rng.integers(1, T, size=count) if T > 1 else np.ones(count, dtype=np.int64)
    worst = 0.0
    for begin in range(0, count, pairs):
        idx = slice(begin, begin + pairs)
        original = torch.from_numpy(rows[chosen[idx], :-1].astype(np.int64))
        spliced = original.clone()
        donor = torch.from_numpy(rows[donors[idx], :-1].astype(np.int64))
        cut = torch.from_numpy(cuts[idx])
        after = torch.arange(T)[None, :] >= cut[:, None]
        spliced[after] = donor[after]
        n = len(original)
        logits = forward(torch.cat([original, spliced]).to(device))
        before = (~after).to(device)
        a = torch.log_softmax(logits[:n].float(), -1)
        b = torch.log_softmax(logits[n:].float(), -1)
        same = a == b  # -inf == -inf (a masked vocabulary entry) is no change
        delta = torch.where(same, torch.zeros((), device=device), (a - b).abs()).amax(-1)  # (n, T)
        delta = torch.where(before, delta, torch.zeros((), device=device))
        if not bool(torch.isfinite(delta).all()):
            return float("nan")
        worst = max(worst, float(delta.max()))
        del logits, a, b
    return worst

"""The fixed metric: bits per byte on the validation split.

    val_bpb = sum of cross-entropy (nats) over scored targets / (ln 2 * their total bytes)

A target is scored when its token stands for at least one byte (so BOS targets are not), and
exactly `profile.eval_tokens` targets are read: the validation documents in file order, packed
BOS-aligned into rows like the training loader but never shuffled, so every run, seed, batch
size and world size scores the very same tokens. Byte counts are the tokens' raw byte lengths
(`Tokenizer.token_bytes()`), which makes the number comparable across vocabularies.

This module lives in the installed package, outside the workspace: `train.py` can call it but
an edit of `train.py` cannot change it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .contract import RunConfig, record_evaluation, run_config
from .dataloader import BestFitPacker, Exhausted, gather
from .errors import PrepareError
from .shards import open_split
from .tokenizer import FILENAME as TOKENIZER_FILE
from .tokenizer import load_tokenizer

CE_CHUNK_ELEMENTS = 2**26  # float32 logits scored at once (256 MB), bounds the metric's own memory

# Per process: (data_dir, seq_len, eval_tokens, file stamps) -> (rows, token_bytes).
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


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


def _cached(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    data_dir = Path(cfg.data_dir).resolve()
    profile = cfg.profile
    key = (
        str(data_dir),
        profile.seq_len,
        profile.eval_tokens,
        _stamp(data_dir / "val.bin") if (data_dir / "val.bin").exists() else None,
        _stamp(data_dir / TOKENIZER_FILE) if (data_dir / TOKENIZER_FILE).exists() else None,
    )
    if key not in _CACHE:
        rows = validation_rows(data_dir, profile.seq_len, profile.eval_tokens)
        token_bytes = load_tokenizer(data_dir).token_bytes()
        if int(rows.max()) >= len(token_bytes):
            raise PrepareError(
                f"validation tokens in {data_dir} exceed the tokenizer's vocabulary; run `evolve prepare` again"
            )
        _CACHE.clear()  # one dataset per process is the normal case; don't hoard memory
        _CACHE[key] = (rows, token_bytes)
    return _CACHE[key]


def _model_device(model: torch.nn.Module, fallback: str) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device(fallback)


def _leaks_future(model: torch.nn.Module, x: torch.Tensor, logits: torch.Tensor, vocab: int) -> bool:
    """True when the logits before position k change with the tokens from k on: the model reads
    the answer (x holds the whole row, so a non-causal model can copy the next token)."""
    k = x.size(1) // 2
    probe = x.clone()
    probe[:, k:] = (probe[:, k:] + 1) % vocab  # same shape, so a compiled model is not recompiled
    ref = logits[:, :k].float().clone()
    other = model(probe)[:, :k].float()
    same = (ref == other) | ((ref - other).abs() <= 0.05 + 0.02 * ref.abs()) | (ref.isnan() & other.isnan())
    return not bool(same.all())


def _agrees(ce: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """Cross-entropy as F computed it matches logsumexp minus the target's logit: torch functions
    the metric relies on were not swapped for flattering ones."""
    direct = torch.logsumexp(logits, -1) - logits.gather(-1, targets[:, None]).squeeze(-1)
    finite = torch.isfinite(ce) & torch.isfinite(direct)
    close = (ce[finite] - direct[finite]).abs() <= 1e-3 + 1e-3 * direct[finite].abs()
    return bool(close.all()) and bool((torch.isfinite(ce) == torch.isfinite(direct)).all())


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_bpb(
    model: torch.nn.Module, batch_size: int | None = None, cfg: RunConfig | None = None
) -> float:
    """Bits per byte of `model` on exactly `cfg.profile.eval_tokens` validation targets (lower is better).

    `model(x)` takes int64 token ids (B, T) on the model's device and returns logits (B, T, V),
    V >= the vocabulary, in any float dtype (wrap the call in autocast if you like); pass the bare
    model, not a DistributedDataParallel wrapper. Cross-entropy is computed here in float32 and
    summed in float64. Under torchrun (torch.distributed initialised) ranks score different rows
    and every rank returns the same number. Runs in eval mode without gradients and restores the
    model's training mode. `batch_size` is rows per forward (default: about 256K tokens on a GPU,
    16K on a CPU); it changes speed and memory, never the result. Each call is recorded for the
    trainer (prepare.contract.record_evaluation), with a check that the first batch's logits do not
    depend on later tokens; train.py reports this value and no other."""
    cfg = cfg or run_config()
    rows, token_bytes = _cached(cfg)
    seq_len, eval_tokens = cfg.profile.seq_len, cfg.profile.eval_tokens
    device = _model_device(model, cfg.device)
    if batch_size is None:
        batch_size = max(1, (2**18 if device.type == "cuda" else 2**14) // seq_len)
    rank, world_size = _distributed()
    mine = np.arange(rank, len(rows), world_size)  # this rank's rows
    # The last row may be scored only in part, so that exactly eval_tokens targets count.
    scored_per_row = np.clip(eval_tokens - mine * seq_len, 0, seq_len)
    bytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    positions = torch.arange(seq_len, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    leaks, consistent = False, True
    model.eval()
    try:
        with torch.no_grad():
            for begin in range(0, len(mine), batch_size):
                batch = torch.from_numpy(rows[mine[begin : begin + batch_size]].astype(np.int64)).to(device)
                x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
                limit = torch.from_numpy(scored_per_row[begin : begin + batch_size]).to(device)
                logits = model(x)
                if logits.ndim != 3 or logits.shape[:2] != x.shape or logits.shape[2] < len(token_bytes):
                    raise PrepareError(
                        f"model(x) must return logits of shape (B, T, V>={len(token_bytes)}) for x of "
                        f"shape {tuple(x.shape)}, got {tuple(logits.shape)}"
                    )
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
                if begin == 0:  # after scoring: the probe may reuse the logits' memory (CUDA graphs)
                    leaks = _leaks_future(model, x, logits, len(token_bytes))
    finally:
        model.train(was_training)
    if world_size > 1:
        totals = torch.stack([nats, nbytes.double()])
        torch.distributed.all_reduce(totals)
        nats, nbytes = totals[0], totals[1]
    value = float(nats) / (math.log(2) * float(nbytes))
    num_params = sum(p.numel() for p in model.parameters())
    record_evaluation(
        value,
        eval_tokens=eval_tokens,
        seq_len=seq_len,
        data_dir=str(Path(cfg.data_dir).resolve()),
        num_params=num_params,
        leaks_future=leaks,
        consistent=consistent,
    )
    return value

"""What the `evolve` commands share: opening the workspace, the console, `--gpus`, the leaderboard.

Its own module so that `evolve run`, `evolve validate` and the demo (autoevolve.demo) import it
rather than each other (tests/test_import_graph.py fails on an import circle)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from genome import GenomeError, open_workspace
from genome.workspace import Workspace
from prepare.profiles import get_profile

from .errors import EvolveError
from .store import Ranked, Store


def workspace_at(path: Path) -> Workspace:
    """The workspace at `path` (or the nearest above it); a problem is an EvolveError, one line."""
    try:
        return open_workspace(path)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None


def make_console() -> Console:
    """A console; in a log file (no terminal), wide enough that tables do not wrap every cell."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def parse_gpus(spec: str | None, profile: str) -> tuple[str, ...]:
    """`all`, `0,1` or `cpu[:N]` as the executor's devices."""
    if spec is None:
        spec = "all" if get_profile(profile).device == "cuda" else "cpu"
    spec = spec.strip().lower()
    if spec == "cpu" or spec.startswith("cpu:"):
        count = spec.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise EvolveError(f"--gpus {spec}: use cpu or cpu:N with N >= 1")
        return ("cpu",) * int(count)
    if spec == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise EvolveError(
                "--gpus all: no CUDA device found; use --gpus cpu (with --profile tiny) to run on CPU"
            )
        return tuple(str(i) for i in range(n))
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise EvolveError(f"--gpus {spec!r}: use all, a list like 0,1, or cpu[:N]")
    return tuple(parts)


def leaderboard(store: Store, run: str, depth: int, n: int) -> Group:
    """The N best that are kept (or still being judged), then apart the N best rejected: a child
    rejected on one lucky seed often has the lowest mean, and ranked among the others it reads
    as the winner."""
    scores = store.scores(depth, run)
    base = next((i for i in store.individuals(run) if not i.parents), None)
    base_mean = scores[base.id].mean if base is not None and base.id in scores else None
    kept: list[Ranked] = []
    rejected: list[Ranked] = []
    for ind_id, score in sorted(scores.items(), key=lambda kv: (kv[1].mean, -kv[1].n, kv[0])):
        ind = store.get(ind_id)
        side = rejected if ind is not None and ind.decision == "reject" else kept
        if ind is not None and len(side) < n:
            side.append(Ranked(ind, score))
        if len(kept) >= n and len(rejected) >= n:
            break
    title = f"top {n} of run {run} (val_bpb at depth {depth}, lower is better): kept or being judged"
    tables = [board_table(title, kept, base_mean)]
    if rejected:
        tables.append(
            board_table(f"best {n} rejected: not shown better than their parent (few seeds can be luck)",
                         rejected, base_mean)
        )  # fmt: skip
    return Group(*tables)


def board_table(title: str, board: list[Ranked], base_mean: float | None) -> Table:
    """One of `leaderboard`'s tables: rank, id, score, the gap to the baseline, decision, origin."""
    table = Table(title=title)
    for col in ("#", "id", "val_bpb", "vs baseline", "decision", "operator", "island", "description"):
        table.add_column(col, justify="right" if col in ("#", "island") else "left")
    for rank, line in enumerate(board, start=1):
        ind, score = line.individual, line.score
        delta = f"{score.mean - base_mean:+.6f}" if base_mean is not None else "-"
        table.add_row(
            str(rank),
            ind.id,
            str(score),
            delta,
            ind.decision or "-",
            ind.operator,
            str(ind.island),
            ind.description,
        )
    return table

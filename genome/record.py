"""One individual as git sees it: the frozen `Genome` record, its ids, and its commit message.

Ids are one counter per workspace, `g0000` (the first run's baseline), `g0001`, ...: short enough
to type in `evolve export g0042`, and unique across every run of the workspace (the next run's
baseline takes the next free number, and an id is never handed out twice: see
`GenomeRepo._allocate`). They sort as text up to `g9999`; `sort_key` sorts any number of them.

A run's baseline may name where it came from: `Evolve-Origin: g0042` is the individual of an
earlier run whose code it starts from (read from the `Evolved-From` trailer that `evolve export`
writes), so the lineage goes back across runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import GenomeError

BRANCH_PREFIX = "evo"
BASELINE_ID = "g0000"
BASELINE_OPERATOR = "baseline"
ID_RE = re.compile(r"^g(\d{4,})$")
# A run name becomes one path component of a branch name: keep it boring.
RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRAILER_ID = "Evolve-Id"
TRAILER_OPERATOR = "Evolve-Operator"
TRAILER_PARENTS = "Evolve-Parents"
TRAILER_ORIGIN = "Evolve-Origin"  # a baseline's: the earlier run's individual it was exported from
EXPORT_TRAILER = "Evolved-From"  # an export commit's: `Evolved-From: <run>/<id> <sha>`
NO_PARENTS = "none"  # the baseline's Evolve-Parents value
_TRAILER_LINE = re.compile(r"^(Evolve-[A-Za-z-]+):[ \t]*(.*?)\s*$")


@dataclass(frozen=True)
class Genome:
    """One individual: a commit on `evo/<run>/<id>` whose trailers name its id, operator and parents."""

    run: str
    id: str
    commit: str  # full hex sha
    parents: tuple[str, ...]  # parent ids, in merge order (first, second)
    operator: str
    description: str  # the commit's subject: the edit's one-line description
    branch: str  # "evo/<run>/<id>"
    origin: str = ""  # a baseline's Evolve-Origin: the earlier run's individual it starts from

    @property
    def is_baseline(self) -> bool:
        return not self.parents


def format_id(number: int) -> str:
    return f"g{number:04d}"


def id_number(genome_id: str) -> int:
    match = ID_RE.match(genome_id)
    if not match:
        raise GenomeError(f"{genome_id!r} is not a genome id; ids look like g0012")
    return int(match.group(1))


def sort_key(genome_id: str) -> int:
    return id_number(genome_id)


def check_run_name(run: str) -> str:
    if not RUN_RE.match(run) or ".." in run or run.endswith((".lock", ".")):
        raise GenomeError(
            f"run name {run!r} is not usable in a branch name; use letters, digits, '-', '_' or '.'"
        )
    return run


def branch_name(run: str, genome_id: str) -> str:
    return f"{BRANCH_PREFIX}/{run}/{genome_id}"


def one_line(text: str, limit: int = 200) -> str:
    """A description fit for a commit subject: one line, no trailer look-alike, not empty."""
    line = " ".join(text.split())
    if len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line or "(no description)"


def format_message(
    description: str,
    genome_id: str,
    operator: str,
    parents: tuple[str, ...],
    body: str = "",
    origin: str = "",
) -> str:
    """Subject, optional body (the rationale), then the trailers as the last paragraph (three,
    and `Evolve-Origin` for a baseline that starts from an earlier run's individual)."""
    parts = [one_line(description)]
    # Lines of the body that look like our trailers would confuse the parser: drop them.
    kept = [ln.rstrip() for ln in body.strip().splitlines() if not _TRAILER_LINE.match(ln.strip())]
    if any(ln.strip() for ln in kept):
        parts.append("\n".join(kept).strip())
    parts.append(
        f"{TRAILER_ID}: {genome_id}\n"
        f"{TRAILER_OPERATOR}: {operator}\n"
        f"{TRAILER_PARENTS}: {','.join(parents) if parents else NO_PARENTS}"
        + (f"\n{TRAILER_ORIGIN}: {origin}" if origin else "")
    )
    return "\n\n".join(parts) + "\n"


def parse_trailers(message: str) -> dict[str, str]:
    """The `Evolve-*` trailers of the message's last paragraph (empty when there are none)."""
    paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
    if len(paragraphs) < 2:
        return {}
    trailers: dict[str, str] = {}
    for line in paragraphs[-1].splitlines():
        match = _TRAILER_LINE.match(line.strip())
        if match:
            trailers[match.group(1)] = match.group(2)
    return trailers


def genome_from_commit(run: str, branch: str, commit: str, message: str) -> Genome:
    """Rebuild a Genome from its branch tip; raise if the tip lacks the trailers."""
    trailers = parse_trailers(message)
    missing = [k for k in (TRAILER_ID, TRAILER_OPERATOR, TRAILER_PARENTS) if k not in trailers]
    if missing:
        raise GenomeError(
            f"branch {branch} points at {commit[:10]}, which lacks the {', '.join(missing)} trailer(s); "
            f"move the branch back to the evolved commit (see `git reflog {branch}`)"
        )
    genome_id = trailers[TRAILER_ID]
    if branch.rsplit("/", 1)[-1] != genome_id:
        raise GenomeError(f"branch {branch} holds a commit whose {TRAILER_ID} is {genome_id}; rename one")
    raw = trailers[TRAILER_PARENTS]
    parents = () if raw in ("", NO_PARENTS) else tuple(p.strip() for p in raw.split(",") if p.strip())
    return Genome(
        run=run,
        id=genome_id,
        commit=commit,
        parents=parents,
        operator=trailers[TRAILER_OPERATOR],
        description=message.split("\n", 1)[0].strip(),
        branch=branch,
        origin=trailers.get(TRAILER_ORIGIN, ""),
    )


_EXPORTED = re.compile(rf"^{EXPORT_TRAILER}:[ \t]*(\S+)/(g\d{{4,}})\b", re.MULTILINE)


def origin_of(message: str) -> str:
    """The id a commit message says its code came from: an export's `Evolved-From` trailer, or
    the commit's own `Evolve-Id` when it is an individual; "" for anything else."""
    exported = _EXPORTED.findall(message)
    if exported:
        return exported[-1][1]
    return parse_trailers(message).get(TRAILER_ID, "")

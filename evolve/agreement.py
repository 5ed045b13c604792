"""Git and the store agree: every individual's `evo/<run>/<id>` branch points at the commit it was scored at.

The store records each individual's commit (and each evaluation the commit it trained). A branch
deleted or moved by hand breaks that link: the id's score would be read as another commit's, and
`evolve export` would ship untested code under it. `compare` finds every such break; the engine
refuses to resume a run with one (`refuse_disagreement`), `evolve export` refuses to export an
individual whose branch disagrees (`check_export`), and `evolve doctor --repair` puts the branches
back. An individual whose commit is gone from git for good is marked lost by the repair (an event
`lost`, its decision `reject`): it is never a parent or a champion again, and no longer a
disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genome.record import BRANCH_PREFIX, ID_RE, branch_name
from genome.repo import git_process, run_git

from .errors import EvolveError
from .store import Store

LOST_EVENT = "lost"


@dataclass(frozen=True)
class Mismatch:
    kind: str  # "deleted" (no branch), "moved" (another commit), "unrecorded" (a branch the store lacks)
    run: str
    id: str
    branch: str
    recorded: str | None  # the commit the store scored (None for "unrecorded")
    actual: str | None  # the commit the branch points at (None for "deleted")

    def text(self) -> str:
        if self.kind == "deleted":
            return f"{self.branch} was deleted ({self.id} was scored at {self.recorded[:10]})"
        if self.kind == "moved":
            return f"{self.branch} was moved to {self.actual[:10]} ({self.id} was scored at {self.recorded[:10]})"
        return f"{self.branch} ({self.actual[:10]}) is in git but not in the store"


def branch_tips(root: Path) -> dict[str, str]:
    """Every `evo/<run>/<id>` branch and the commit it points at."""
    out = run_git(root, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/heads/{BRANCH_PREFIX}/")
    tips = {}
    for line in out.splitlines():
        ref, _, sha = line.partition(" ")
        name = ref.removeprefix("refs/heads/")
        if name.count("/") == 2 and ID_RE.match(name.rsplit("/", 1)[-1]):
            tips[name] = sha
    return tips


def lost_ids(store: Store, run: str | None = None) -> set[str]:
    """Individuals a repair marked lost (their commit is gone from git)."""
    return {str(e.payload.get("id")) for e in store.events(run, kind=LOST_EVENT)}


def compare(store: Store, root: Path, run: str | None = None) -> list[Mismatch]:
    """Every break between the store's individuals (of `run`, or of every run) and git's branches."""
    tips = branch_tips(root)
    lost = lost_ids(store, run)
    out = []
    known = set()
    for ind in store.individuals(run):
        branch = ind.branch or branch_name(ind.run, ind.id)
        known.add(branch)
        if ind.id in lost:
            continue
        actual = tips.get(branch)
        if actual is None:
            out.append(Mismatch("deleted", ind.run, ind.id, branch, ind.commit, None))
        elif actual != ind.commit:
            out.append(Mismatch("moved", ind.run, ind.id, branch, ind.commit, actual))
    for branch, sha in sorted(tips.items()):
        name = branch.split("/")[1]
        if branch not in known and (run is None or name == run):
            out.append(Mismatch("unrecorded", name, branch.rsplit("/", 1)[-1], branch, None, sha))
    return out


def summary(problems: list[Mismatch], limit: int = 3) -> str:
    shown = "; ".join(p.text() for p in problems[:limit])
    return shown + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


def refuse_disagreement(store: Store, root: Path, run: str) -> None:
    """Raise (one line) when a branch of `run` was deleted or moved: nothing is trained under it."""
    problems = [m for m in compare(store, root, run) if m.kind != "unrecorded"]
    if problems:
        raise EvolveError(
            f"git and the store disagree on run {run!r}: {summary(problems)}; nothing was trained: "
            f"`evolve doctor` shows it all, `evolve doctor --repair` puts the branches back"
        )


def check_export(store: Store, root: Path, genome_id: str) -> None:
    """Raise (one line) when `genome_id`'s branch is not the commit the store scored."""
    ind = store.get(genome_id)
    if ind is None or genome_id in lost_ids(store):
        return
    branch = ind.branch or branch_name(ind.run, ind.id)
    proc = git_process(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    actual = proc.stdout.decode().strip() if proc.returncode == 0 else None
    if actual != ind.commit:
        kind = "moved" if actual else "deleted"
        problem = Mismatch(kind, ind.run, ind.id, branch, ind.commit, actual).text()
        raise EvolveError(
            f"not exporting {genome_id}: {problem}, so its score is not that code's; "
            f"`evolve doctor --repair` puts the branch back"
        )

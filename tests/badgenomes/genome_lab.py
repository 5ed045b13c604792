"""A real workspace for running purpose-built train.py variants: edits on the baseline, commits,
the static guard, one git worktree per variant, runs through a LocalExecutor, and snapshots of
everything outside the worktrees (git, the data, prepare, a folder of the user's files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import genome.baseline
from genome import GuardResult, WorktreePool, check, init_workspace, rewrite_hyperparams
from trainer import Job, LocalExecutor, RunResult, Status

BASELINE = Path(genome.baseline.__path__[0]) / "train.py"
# Smaller CPU steps: a budget of 4096 tokens is four of them.
FAST = {"CPU_TOTAL_BATCH_TOKENS": 1024, "CPU_DEVICE_BATCH_SIZE": 4}
# Anchors in the baseline that the variants edit around (a semantic line each, not a line number).
EARLY = "import contextlib"  # the first line: before the heavy imports, so a quick mistake fails fast
SETUP = "cfg = prepare.run_config()"
IMPORTS = "import prepare"
STEP_END = "loss_value = train_loss.item()"
LOOP = "for i, (x, y) in enumerate(loader):"
REPORT = "prepare.report("
FORWARD = "def forward(self, idx, targets=None):"


@dataclass(frozen=True)
class Edit:
    anchor: str
    code: str
    how: str  # "after" or "before" the first line holding anchor, "replace" the anchor, or "append"


def after(anchor: str, code: str) -> Edit:
    return Edit(anchor, code, "after")


def before(anchor: str, code: str) -> Edit:
    return Edit(anchor, code, "before")


def replace(old: str, new: str) -> Edit:
    return Edit(old, new, "replace")


def append(code: str) -> Edit:
    return Edit("", code, "append")


def apply(source: str, edits: Sequence[Edit]) -> str:
    """`source` with each edit made; inserted code takes the anchor line's indentation (one level
    deeper after a line that opens a block)."""
    for edit in edits:
        if edit.how == "append":
            source = source.rstrip("\n") + "\n" + textwrap.dedent(edit.code).strip("\n") + "\n"
            continue
        if edit.anchor not in source:
            raise AssertionError(f"the baseline has no {edit.anchor!r} any more; update the variant")
        if edit.how == "replace":
            source = source.replace(edit.anchor, edit.code, 1)
            continue
        lines = source.splitlines(keepends=True)
        i = next(n for n, line in enumerate(lines) if edit.anchor in line)
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        if edit.how == "after" and lines[i].rstrip().endswith(":"):
            indent += "    "
        block = textwrap.indent(textwrap.dedent(edit.code).strip("\n"), indent) + "\n"
        lines.insert(i + 1 if edit.how == "after" else i, block)
        source = "".join(lines)
    return source


def baseline_source() -> str:
    return rewrite_hyperparams(BASELINE.read_text(), FAST)


@dataclass(frozen=True)
class Variant:
    """One bad train.py and what the harness must make of it."""

    name: str
    what: str  # one line: the mistake or the mischief
    edits: tuple[Edit, ...]
    status: Status | None  # the trainer's verdict when run (even past the guard); None: not run
    reason: str = ""  # part of the trainer's reason
    guard: str | None = None  # part of the guard's reason when the guard must reject it first
    budget: float = 4096  # training tokens (4 steps); or seconds with budget_unit="seconds"
    budget_unit: str | None = None
    allowance: float = 60.0
    window_limit: float | None = None
    exit_grace: float | None = None
    own_data: bool = False  # run on a throwaway copy of the data (the variant destroys it)
    own_prepare: bool = False  # import a throwaway copy of prepare (the variant edits it)
    devices: int = 1
    depth: int = 2
    check: Callable[[Outcome, Lab], None] | None = None  # more to assert about the aftermath
    same_as_honest: bool = False  # it passes with exactly the honest baseline's score (tests/attacks)
    worse_than_honest: bool = False  # it passes with a worse score than the honest baseline's


@dataclass
class Outcome:
    variant: Variant
    source: str
    guard: GuardResult
    result: RunResult | None  # None when the variant is not run (the guard is its only judge)
    worktree: Path
    mark: str  # the {MARK} of this variant's sleeping children


def tree_hashes(root: Path, skip: Sequence[Path] = ()) -> dict[str, str]:
    """sha256 of every file (and the target of every link) under root, by relative path."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if here / d not in skip)
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def alive_with(marker: str) -> list[int]:
    """Live (not zombie) processes with `marker` as one of their command-line arguments."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry))
    return found


@dataclass
class Lab:
    """A workspace made by `evolve init`, a folder of the user's files, the data, a prepare copy."""

    root: Path
    data: Path
    prepare_copy: Path
    values: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workspace = init_workspace(self.root / "ws", run="lab", profile="tiny")
        self.repo = self.workspace.repo()
        self.base = self.repo.baseline()
        # The user's files live outside /tmp (where pytest keeps everything else): a run's /tmp is
        # its own, so only a folder elsewhere shows what the sandbox makes of the rest of the disk.
        self.sentinel = Path(tempfile.mkdtemp(prefix="evolve-users-files-", dir="/var/tmp"))
        (self.sentinel / "keep.txt").write_text("the user's own file\n")
        self.logs = self.root / "logs"

    @property
    def ws(self) -> Path:
        return self.workspace.root

    def protected(self) -> dict[str, dict[str, str]]:
        """Hashes of everything a run must leave alone: the workspace (its git directory and store)
        apart from the worktrees, the data, prepare, and the user's folder."""
        return {
            "workspace": tree_hashes(self.ws, skip=[self.ws / ".evolve" / "worktrees"]),
            "data": tree_hashes(self.data),
            "prepare": tree_hashes(self.prepare_copy),
            "users-files": tree_hashes(self.sentinel),
        }

    def run_all(
        self, variants: Sequence[Variant], slots: int = 2, timeout: float = 900
    ) -> dict[str, Outcome]:
        """Commit each variant as a child of the baseline, guard it, check it out in a worktree of
        its own, and run them all (guard or not) through a LocalExecutor with `slots` CPU slots."""
        sources, children = {}, {}
        # seconds to sleep, and a command-line argument no other process on the machine has
        marks = {v.name: f"{770_000 + i}.{os.getpid() % 1000:03d}" for i, v in enumerate(variants)}
        prepares = {v.name: self.prepare_copy for v in variants}
        for v in variants:
            if v.own_prepare:
                prepares[v.name] = self.root / f"prepare-{v.name}" / "prepare"
                shutil.copytree(self.prepare_copy, prepares[v.name])
            values = {**self.values, "MARK": marks[v.name], "PREPARE": str(prepares[v.name])}
            source = apply(baseline_source(), v.edits)
            for key, value in values.items():
                source = source.replace("{" + key + "}", value)
            sources[v.name] = source
            children[v.name] = self.repo.commit_child(
                [self.base], {"train.py": source}, v.name, "llm_mutation"
            )
        guards = {v.name: check(self.repo, self.base, children[v.name]) for v in variants}
        pool = WorktreePool(self.repo, len(variants))
        trees = {v.name: pool.checkout(i, children[v.name]) for i, v in enumerate(variants)}
        self.before = self.protected()
        with LocalExecutor.cpu(slots) as executor:
            futures = {}
            for v in sorted((v for v in variants if v.status is not None), key=lambda v: -v.devices):
                data = self.data
                if v.own_data:
                    data = self.root / f"data-{v.name}"
                    shutil.copytree(self.data, data)
                job = Job(
                    worktree=trees[v.name],
                    depth=v.depth,
                    budget=v.budget,
                    seed=1,
                    profile="tiny",
                    data_dir=data,
                    log_dir=self.logs / v.name,
                    extra_env={"PYTHONPATH": str(prepares[v.name].parent), "OMP_NUM_THREADS": "1"},
                    allowance=v.allowance,
                    gpus_per_run=v.devices,
                    budget_unit=v.budget_unit,
                    window_limit=v.window_limit,
                    exit_grace=v.exit_grace,
                )
                futures[v.name] = executor.submit(job)
            results = {name: f.result(timeout=timeout) for name, f in futures.items()}
        self.after = self.protected()
        return {
            v.name: Outcome(
                v, sources[v.name], guards[v.name], results.get(v.name), trees[v.name], marks[v.name]
            )
            for v in variants
        }

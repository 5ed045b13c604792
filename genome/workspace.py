"""The workspace: a git repository with train.py, program.md, evolve.toml and `.evolve/` (ignored).

`init_workspace(DIR)` makes one. In a new or empty directory it creates the repository, whose
first commit holds the baseline train.py, program.md and evolve.toml and is generation 0. In the
root of an existing repository whose HEAD has a `train.py`, it adopts that commit as generation 0
(committing evolve.toml, program.md and the `.gitignore` line when they are missing), and never
with uncommitted changes around. In an existing workspace it starts a new run only when asked to
by a new run name: that is how the next run starts from an exported champion. The new run's
baseline takes the workspace's next free id (ids are unique across runs) and records, as its
`Evolve-Origin`, the individual the exported code came from.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import GenomeError
from .record import BASELINE_ID, BASELINE_OPERATOR, format_message
from .repo import MACHINE_IDENTITY, GenomeRepo, git_process, run_git
from .settings import SETTINGS_FILE, Settings, load_settings, rename_run, to_toml

STATE_DIR = ".evolve"
PROGRAM_FILE = "program.md"
TRAIN_FILE = "train.py"
GITIGNORE_LINES = (".evolve/", "__pycache__/")


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def run(self) -> str:
        return self.settings.name

    def repo(self) -> GenomeRepo:
        return GenomeRepo(self.root, self.settings.name, self.settings.mutable)


def baseline_train_py() -> Path:
    """The packaged generation-0 train.py."""
    from .baseline import BASELINE

    if not BASELINE.is_file():
        raise GenomeError(f"the packaged baseline {BASELINE} is missing; reinstall autoevolve")
    return BASELINE


def default_program() -> str:
    """The packaged default program.md (the repository's top-level file, shipped as package data)."""
    path = Path(__file__).with_name("baseline") / PROGRAM_FILE
    try:
        return path.read_text()
    except FileNotFoundError:
        raise GenomeError(f"the packaged {path} is missing; reinstall autoevolve") from None


def default_run_name() -> str:
    """Today as a short run name, e.g. `mar27`."""
    return time.strftime("%b%d").lower()


def find_workspace(start: Path | str = ".") -> Path:
    """The nearest directory at or above `start` that holds evolve.toml."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / SETTINGS_FILE).is_file():
            return folder
    raise GenomeError(f"no {SETTINGS_FILE} in {here} or above; cd into a workspace or run `evolve init DIR`")


def open_workspace(path: Path | str = ".") -> Workspace:
    root = find_workspace(path)
    return Workspace(root=root, settings=load_settings(root / SETTINGS_FILE))


def _identity(root: Path) -> dict[str, str]:
    """The user's git identity when configured (their commits), else the machine's."""
    name = git_process(root, "config", "user.name").returncode == 0
    email = git_process(root, "config", "user.email").returncode == 0
    return {} if name and email else dict(MACHINE_IDENTITY)


def _commit(
    root: Path, paths: list[str], subject: str, body: str, genome_id: str = BASELINE_ID, origin: str = ""
) -> None:
    """Commit exactly `paths` with generation 0's trailers (its id, and where its code came from)."""
    run_git(root, "add", "--", *paths)
    message = format_message(subject, genome_id, BASELINE_OPERATOR, (), body, origin=origin)
    run_git(
        root,
        "commit",
        "-q",
        "--no-verify",
        "-F",
        "-",
        "--",
        *paths,
        input=message.encode(),
        env=_identity(root),
    )


def _ensure_gitignore(root: Path) -> bool:
    path = root / ".gitignore"
    text = path.read_text() if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present and line.rstrip("/") not in present]
    if not missing:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "\n".join(missing) + "\n")
    return True


def init_workspace(
    path: Path | str,
    run: str | None = None,
    *,
    profile: str | None = None,
    source: str | None = None,
    strategy: str | None = None,
    islands: int | None = None,
    budget: float | None = None,
    depth: int | None = None,
    train_py: Path | str | None = None,
    reserved: int = -1,
) -> Workspace:
    """Create (or adopt) a workspace at `path`; its generation 0 is `evo/<run>/<id>` (`g0000` for
    the first run). `reserved`: the highest id number used elsewhere (the store's), never handed out."""
    root = Path(path).expanduser().resolve()
    changes = dict(
        profile=profile, source=source, strategy=strategy, islands=islands, budget=budget, depth=depth
    )
    if (root / ".git").exists():
        if train_py is not None:
            raise GenomeError(
                f"{root} is already a git repository: it starts from its own train.py, not --train"
            )
        return _adopt(root, run, changes, reserved)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise GenomeError(
            f"{root} exists and is not empty; choose a new directory, or `git init` there and commit "
            f"your train.py to adopt it"
        )
    source_py = Path(train_py) if train_py is not None else baseline_train_py()
    if not source_py.is_file():
        raise GenomeError(f"{source_py} is not a file; pass the train.py to start from")
    settings = Settings(name=run or default_run_name()).with_changes(**changes)
    program = default_program()
    root.mkdir(parents=True, exist_ok=True)
    try:
        run_git(root, "init", "-q", "-b", "main")
        shutil.copyfile(source_py, root / TRAIN_FILE)
        (root / PROGRAM_FILE).write_text(program)
        (root / SETTINGS_FILE).write_text(to_toml(settings))
        _ensure_gitignore(root)
        (root / STATE_DIR).mkdir()
        _commit(
            root,
            [TRAIN_FILE, PROGRAM_FILE, SETTINGS_FILE, ".gitignore"],
            "baseline: train.py, program.md and evolve.toml",
            f"Generation 0 of run {settings.name}, made by `evolve init`.",
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # never leave a half-made workspace behind
        raise
    workspace = Workspace(root=root, settings=settings)
    workspace.repo().ensure_baseline("HEAD")
    return workspace


def _adopt(root: Path, run: str | None, changes: dict, reserved: int = -1) -> Workspace:
    if git_process(root, "rev-parse", "--verify", "--quiet", "HEAD").returncode != 0:
        raise GenomeError(f"the repository in {root} has no commits yet; commit your train.py first")
    probe = GenomeRepo(root, run or default_run_name())
    dirty = probe.user_changes()
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise GenomeError(
            f"{root} has uncommitted changes ({shown}); commit or stash them, then run `evolve init` again"
        )
    if probe.read_exact("HEAD", TRAIN_FILE) is None:
        hint = "commit it first" if (root / TRAIN_FILE).exists() else "add your train.py and commit it"
        raise GenomeError(f"HEAD of {root} has no {TRAIN_FILE}; {hint} (or `evolve init` a new directory)")
    settings_path = root / SETTINGS_FILE
    to_commit: list[str] = []
    if settings_path.exists():
        settings = load_settings(settings_path)
        taken = GenomeRepo(root, settings.name)._tips()
        if run is None and taken:
            raise GenomeError(
                f"{root} is already a workspace (run {settings.name!r}); to start a new run from its "
                f"current commit: evolve init {root} --run NEWNAME"
            )
        name = run or settings.name
        if run and GenomeRepo(root, run)._tips():
            raise GenomeError(f"run {run!r} already exists in {root}; choose another --run name")
        if any(v is not None for v in changes.values()):
            settings = Settings(
                name=name,
                profile=settings.profile,
                source=settings.source,
                strategy=settings.strategy,
                islands=settings.islands,
                budget=settings.budget,
                depth=settings.depth,
                mutable=settings.mutable,
                llm=settings.llm,
            ).with_changes(**changes)
            settings_path.write_text(to_toml(settings))
        elif name != settings.name:
            settings_path.write_text(rename_run(settings_path.read_text(), name))
            settings = load_settings(settings_path)
    else:
        settings = Settings(name=run or default_run_name()).with_changes(**changes)
        settings_path.write_text(to_toml(settings))
    if probe.git("status", "--porcelain", "--", SETTINGS_FILE):
        to_commit.append(SETTINGS_FILE)
    if not (root / PROGRAM_FILE).exists():
        (root / PROGRAM_FILE).write_text(default_program())
        to_commit.append(PROGRAM_FILE)
    if _ensure_gitignore(root):
        to_commit.append(".gitignore")
    (root / STATE_DIR).mkdir(exist_ok=True)
    if to_commit:
        # The commit is generation 0 itself: its trailers name the id the run's baseline gets
        # (the workspace's next free one) and the individual its code came from, if any.
        repo = GenomeRepo(root, settings.name)
        repo.reserve(reserved)
        _commit(
            root,
            to_commit,
            f"evolve init: start run {settings.name}",
            f"Adopts this train.py as generation 0 of run {settings.name}.",
            genome_id=repo.peek_id(),
            origin=repo.find_origin("HEAD"),
        )
    workspace = Workspace(root=root, settings=settings)
    repo = workspace.repo()
    repo.reserve(reserved)
    repo.ensure_baseline("HEAD")
    return workspace

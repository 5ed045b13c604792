"""The workspace repository as a population: every individual is a commit on `evo/<run>/<id>`.

Children are committed with git's plumbing (a temporary index, `commit-tree`, `update-ref` with
the expected old value), so proposing a child never touches the user's checkout or index, and
several threads (or processes) can propose at once: ids are handed out under a lock, and a branch
is only ever created, never moved, so two proposals can't overwrite each other.

Ids are unique across the runs of a workspace and never handed out twice: the next one is above
every `evo/*/<id>` branch of every run, above the high-water mark kept in `.evolve/last-id`
(so a branch deleted by hand does not free its id), and above any floor the caller reserves
(the engine reserves the store's highest id).

Reads go through `git` subprocesses rather than gitpython's shared `cat-file` pipe, which is not
safe to use from several threads; `GenomeRepo.repo` is the gitpython handle for everything else.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import git

from .edits import DEFAULT_PATH, Edit, apply_edit, parse_response
from .errors import EditError, GenomeError
from .record import (
    BASELINE_OPERATOR,
    BRANCH_PREFIX,
    ID_RE,
    TRAILER_ID,
    TRAILER_OPERATOR,
    TRAILER_PARENTS,
    Genome,
    branch_name,
    check_run_name,
    format_id,
    format_message,
    genome_from_commit,
    origin_of,
    parse_trailers,
    sort_key,
)

ZERO_SHA = "0" * 40
# Individuals are made by the machine: commit them under its name, whatever git config says.
MACHINE_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoevolve",
    "GIT_AUTHOR_EMAIL": "autoevolve@localhost",
    "GIT_COMMITTER_NAME": "autoevolve",
    "GIT_COMMITTER_EMAIL": "autoevolve@localhost",
}
ID_MARK = Path(".evolve") / "last-id"  # the highest id number ever handed out in this workspace
ORIGIN_DEPTH = 100  # first-parent commits searched for the export a new run's baseline starts from
# Inherited git variables would point our commands at another repository or index.
_SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


def git_process(
    root: Path, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`git args...` in `root`, with inherited GIT_* redirections removed; never raises."""
    if not Path(root).is_dir():  # e.g. a worktree deleted by hand: a failed command, not a crash
        return subprocess.CompletedProcess(["git", *args], 128, b"", f"no directory {root}".encode())
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full_env.update(env or {})
    return subprocess.run(
        ["git", *args], cwd=root, input=input, env=full_env, capture_output=True, check=False
    )


def run_git(root: Path, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run `git args...` in `root`; return stdout (stripped of the final newline) or raise GenomeError."""
    proc = git_process(root, *args, input=input, env=env)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GenomeError(f"git {args[0]} failed in {root}: {err[-1] if err else proc.returncode}")
    return proc.stdout.decode(errors="replace").removesuffix("\n")


def open_repo(root: Path | str) -> git.Repo:
    try:
        return git.Repo(Path(root))
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise GenomeError(f"{root} is not a git repository; run `evolve init {root}` first") from None


class GenomeRepo:
    """The individuals of one run in one repository."""

    def __init__(self, root: Path | str, run: str, mutable: Sequence[str] = (DEFAULT_PATH,)):
        self.repo = open_repo(root)
        if self.repo.working_tree_dir is None:
            raise GenomeError(f"{root} is a bare repository; a workspace needs a working tree")
        self.root = Path(self.repo.working_tree_dir).resolve()
        self.run = check_run_name(run)
        self.mutable = tuple(mutable)
        self._lock = threading.Lock()
        self._next = 0  # the next id number to try; raised to what the branches and the mark say
        self._scanned = False

    # -- plumbing ------------------------------------------------------------------------------
    def git(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        return run_git(self.root, *args, input=input, env=env)

    @property
    def ref_prefix(self) -> str:
        return f"refs/heads/{BRANCH_PREFIX}/{self.run}/"

    def _tips(self) -> list[tuple[str, str, str]]:
        """(branch, commit, message) of every `evo/<run>/<id>` branch."""
        out = self.git(
            "for-each-ref", "--format=%(refname)%00%(objectname)%00%(contents)%00%00", self.ref_prefix
        )
        tips = []
        for record in out.split("\0\0"):
            record = record.lstrip("\n")
            if not record:
                continue
            ref, commit, message = record.split("\0", 2)
            name = ref.removeprefix("refs/heads/")
            if ID_RE.match(name.rsplit("/", 1)[-1]):
                tips.append((name, commit, message))
        return tips

    def resolve(self, rev: str) -> str:
        """The full sha of a commit-ish, or GenomeError."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except GenomeError:
            raise GenomeError(f"{rev!r} is not a commit in {self.root}") from None

    # -- reading -------------------------------------------------------------------------------
    def genomes(self) -> list[Genome]:
        """Every individual of this run, from branches and trailers alone, sorted by id."""
        found = [genome_from_commit(self.run, b, c, m) for b, c, m in self._tips()]
        return sorted(found, key=lambda g: sort_key(g.id))

    def get(self, genome_id: str) -> Genome:
        sort_key(genome_id)  # a clear error for something that is not an id
        branch = branch_name(self.run, genome_id)
        try:
            out = self.git("log", "-1", "--format=%H%x00%B", f"refs/heads/{branch}", "--")
        except GenomeError:
            raise GenomeError(
                f"no individual {genome_id} in run {self.run!r} (no branch {branch}); "
                f"`git branch --list '{BRANCH_PREFIX}/{self.run}/*'` lists them"
            ) from None
        commit, message = out.split("\0", 1)
        return genome_from_commit(self.run, branch, commit, message)

    def own_ids(self) -> list[str]:
        """The ids of this run's branches, sorted (no commit is read)."""
        out = self.git("for-each-ref", "--format=%(refname)", self.ref_prefix)
        ids = [ref.rsplit("/", 1)[-1] for ref in out.splitlines()]
        return sorted((i for i in ids if ID_RE.match(i)), key=sort_key)

    def find_baseline(self) -> Genome | None:
        """This run's generation 0 (its lowest id, a commit without parents), None before there is one.

        With several roots (a hand-made branch), the one whose operator is `baseline` wins."""
        ids = self.own_ids()
        if not ids:
            return None
        first = self.get(ids[0])
        if first.is_baseline and first.operator == BASELINE_OPERATOR:
            return first
        roots = [g for g in self.genomes() if g.is_baseline]
        roots.sort(key=lambda g: (g.operator != BASELINE_OPERATOR, sort_key(g.id)))
        return roots[0] if roots else None

    def baseline(self) -> Genome:
        found = self.find_baseline()
        if found is None:
            raise GenomeError(
                f"run {self.run!r} has no generation 0 (no branch {branch_name(self.run, 'g*')} without "
                f"parents); start it with `evolve init --run {self.run}`"
            )
        return found

    def find_origin(self, commit: str = "HEAD") -> str:
        """The individual whose code `commit` carries: the nearest first-parent ancestor (itself
        included) that is an export (`Evolved-From`) or an individual; "" when there is none."""
        out = self.git("log", "--first-parent", f"-n{ORIGIN_DEPTH}", "--format=%B%x00", self.resolve(commit))
        for message in out.split("\0"):
            origin = origin_of(message.strip("\n"))
            if origin:
                return origin
        return ""

    def read(self, genome: Genome | str, path: str = DEFAULT_PATH) -> str:
        """The text of `path` in a genome (or any commit-ish)."""
        commit = genome.commit if isinstance(genome, Genome) else genome
        data = self.read_exact(commit, path)
        if data is None:
            raise GenomeError(f"{path} does not exist in commit {commit[:10]}")
        return data.decode()

    def read_exact(self, commit: str, path: str) -> bytes | None:
        """The bytes of `path` at `commit`, or None when it does not exist there."""
        proc = git_process(self.root, "cat-file", "blob", f"{commit}:{path}")
        return proc.stdout if proc.returncode == 0 else None

    # -- ids -----------------------------------------------------------------------------------
    def taken_numbers(self) -> list[int]:
        """The id numbers of every `evo/<run>/<id>` branch, of every run."""
        out = self.git("for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}/")
        names = (ref.rsplit("/", 1)[-1] for ref in out.splitlines() if ref.count("/") == 4)
        return [sort_key(n) for n in names if ID_RE.match(n)]

    def _mark(self) -> int:
        """The high-water mark of `.evolve/last-id` (-1 without one)."""
        try:
            text = (self.root / ID_MARK).read_text().strip()
        except OSError:
            return -1
        return int(text) if text.isdigit() else -1

    def _write_mark(self, number: int) -> None:
        folder = (self.root / ID_MARK).parent
        if not folder.is_dir() or self._mark() >= number:
            return  # not a workspace (a bare test repository): the branches are the record
        tmp = folder / f".last-id.{os.getpid()}.{threading.get_ident()}"
        try:
            tmp.write_text(f"{number}\n")
            os.replace(tmp, self.root / ID_MARK)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise GenomeError(
                f"cannot record the id {format_id(number)} in {self.root / ID_MARK}: {exc}"
            ) from None

    def reserve(self, highest: int) -> None:
        """Never hand out an id numbered `highest` or below (e.g. the store's highest id)."""
        with self._lock:
            self._next = max(self._next, highest + 1)
            if highest >= 0:
                self._write_mark(highest)

    def _scan(self) -> None:
        if not self._scanned:
            self._next = max([self._next, self._mark() + 1, *(n + 1 for n in self.taken_numbers())])
            self._scanned = True

    def peek_id(self) -> str:
        """The id the next child or baseline would get (nothing is reserved)."""
        with self._lock:
            self._scanned = False
            self._scan()
            return format_id(self._next)

    def _allocate(self) -> str:
        with self._lock:
            self._scan()
            number = self._next
            self._write_mark(number)
            self._next = number + 1
            return format_id(number)

    # -- writing -------------------------------------------------------------------------------

    def write_tree(self, base_commit: str, files: Mapping[str, str | bytes]) -> str:
        """A tree: `base_commit`'s with `files` replaced or added, built in a private index."""
        with tempfile.TemporaryDirectory(prefix="evolve-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", base_commit, env=env)
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                blob = self.git("hash-object", "-w", "--stdin", input=data)
                listed = self.git("ls-tree", base_commit, "--", path)
                mode = listed.split()[0] if listed and listed.split()[1] == "blob" else "100644"
                self.git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            return self.git("write-tree", env=env)

    def _commit(self, tree: str, parents: Sequence[str], message: str, identity: Mapping[str, str]) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.git(*args, "-F", "-", input=message.encode(), env=identity)

    def _create_branch(self, branch: str, commit: str) -> bool:
        """Create `branch` at `commit` only if it does not exist yet; False if someone was first."""
        try:
            self.git("update-ref", f"refs/heads/{branch}", commit, ZERO_SHA)
            return True
        except GenomeError:
            if self._exists(branch):
                return False
            raise

    def _exists(self, branch: str) -> bool:
        return (
            git_process(self.root, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0
        )

    def commit_child(
        self,
        parents: Sequence[Genome],
        files: Mapping[str, str | bytes],
        description: str,
        operator: str,
        body: str = "",
        tree: str | None = None,
    ) -> Genome:
        """Commit a child of `parents` (a merge commit when two) whose `files` are replaced."""
        if not parents:
            raise GenomeError("a child needs at least one parent genome")
        tree = tree or self.write_tree(parents[0].commit, files)
        parent_ids = tuple(p.id for p in parents)
        for _ in range(1000):  # another process may take the same id: take the next one
            genome_id = self._allocate()
            message = format_message(description, genome_id, operator, parent_ids, body)
            commit = self._commit(tree, [p.commit for p in parents], message, MACHINE_IDENTITY)
            branch = branch_name(self.run, genome_id)
            if not self._create_branch(branch, commit):
                with self._lock:
                    self._scanned = False  # another process took it: look at the branches again
                continue
            return Genome(
                run=self.run,
                id=genome_id,
                commit=commit,
                parents=parent_ids,
                operator=operator,
                description=message.split("\n", 1)[0],
                branch=branch,
            )
        raise GenomeError(f"could not find a free id in run {self.run!r}")

    def apply_edit(self, parent: Genome, edit: Edit | str, operator: str = "llm_mutation") -> Genome:
        """Apply an edit (or an LLM's raw answer) to `parent` and commit the child.

        Raises EditError, with a message for the LLM, when it does not parse, does not apply,
        touches a file outside the mutable set, or changes nothing."""
        if isinstance(edit, str):
            edit = parse_response(edit)
        outside = [p for p in edit.paths if p not in self.mutable]
        if outside:
            raise EditError(
                f"the edit changes {', '.join(outside)}; only {', '.join(self.mutable)} may be changed"
            )
        files: dict[str, str] = {}
        for path in edit.paths:
            old = self.read_exact(parent.commit, path)
            source = old.decode() if old is not None else ""
            new = apply_edit(source, edit, path)
            if new != source:
                files[path] = new
        if not files:
            raise EditError(f"the edit changes nothing in {', '.join(edit.paths)}; propose an actual change")
        return self.commit_child([parent], files, edit.description, operator, body=edit.rationale)

    def ensure_baseline(self, commit: str = "HEAD", description: str = "baseline") -> Genome:
        """Generation 0 of this run at `commit` (idempotent), under the workspace's next free id
        (`g0000` for the first run).

        A commit that already carries that id's baseline trailers becomes `evo/<run>/<id>` as it
        is; any other gets an empty child commit with the trailers on top, and `Evolve-Origin`
        when its code came from an individual (see `find_origin`)."""
        found = self.find_baseline()
        if found is not None:
            return found
        sha = self.resolve(commit)
        genome_id = self._allocate()
        trailers = parse_trailers(self.git("log", "-1", "--format=%B", sha))
        marked = (
            trailers.get(TRAILER_ID) == genome_id
            and trailers.get(TRAILER_OPERATOR) == BASELINE_OPERATOR
            and trailers.get(TRAILER_PARENTS) in ("", "none")
        )
        if not marked:
            origin = self.find_origin(sha)
            message = format_message(description, genome_id, BASELINE_OPERATOR, (), origin=origin)
            sha = self._commit(self.git("rev-parse", f"{sha}^{{tree}}"), [sha], message, MACHINE_IDENTITY)
        # False when another process created one meanwhile: then theirs is generation 0.
        self._create_branch(branch_name(self.run, genome_id), sha)
        return self.baseline()

    def user_changes(self) -> list[str]:
        """Tracked files with uncommitted changes (staged or not) in the user's checkout."""
        out = self.git("status", "--porcelain", "--untracked-files=no")
        return [line[3:] for line in out.splitlines() if line.strip()]

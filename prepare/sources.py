"""Data sources: where the text comes from, behind one small interface.

`climbmix` is the dataset autoresearch trains on (parquet shards on the Hugging Face hub, a pinned
validation shard); `local:PATH` is the user's own files; `builtin` is the Python standard library's
own source text, which exists on every machine with Python and needs no network (the demo and the
tests use it). A source makes its raw data present (`fetch`) and then yields documents per split.

`builtin`'s validation split is a fixed set of standard-library modules that nothing imports while
training (`BUILTIN_VAL_PACKAGES`, `BUILTIN_VAL_MODULES`). The sandbox must mount the standard library
for Python to run, so the trainer hides those modules in every standard-library folder it mounts
(`held_out_paths`, used by trainer.isolation): the validation text is not in train.py's file system.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from .download import DownloadJob, Progress, download_all
from .errors import PrepareError

SPLITS = ("train", "val")

# A document goes to validation when the hash of its content falls in the first 5% of the range.
# Hashing the content (not its path) sends identical documents to the same split, always.
VAL_PER_10K = 500

LOCAL_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")

HF_DATASET = "karpathy/climbmix-400b-shuffle"
HF_BASE_URL = f"https://huggingface.co/datasets/{HF_DATASET}/resolve/main"
# The dataset's shards are shard_00000 ... shard_06542. As in autoresearch, the LAST one is pinned
# as the validation shard: it is never a training shard, whatever --num-shards says.
CLIMBMIX_MAX_SHARD = 6542
CLIMBMIX_VAL_SHARD = CLIMBMIX_MAX_SHARD


# The builtin source's validation split: these packages and top-level modules of the standard
# library, and nothing else (they never go to training). They are in CPython 3.11 to 3.13 (lib2to3,
# nntplib and telnetlib until 3.12; idlelib, tkinter and turtledemo where the distribution ships
# them), nothing that training imports needs them (the standard library imports ftplib, smtplib and
# xmlrpc only inside functions that training does not call), and they hold 0.5 to 2 MB of text.
BUILTIN_VAL_PACKAGES = (
    "curses", "ensurepip", "idlelib", "lib2to3", "tkinter", "turtledemo", "wsgiref", "xmlrpc",
)  # fmt: skip
BUILTIN_VAL_MODULES = (
    "ftplib", "imaplib", "mailbox", "nntplib", "poplib", "smtplib", "tabnanny", "telnetlib", "turtle",
)  # fmt: skip
# The rule as the manifest records it (`source_info["split"]`): data prepared by another rule (the
# old one drew validation by content hash from the whole library) is refused by `load_manifest`.
BUILTIN_SPLIT = {
    "rule": "held-out modules, hidden in the sandbox",
    "packages": list(BUILTIN_VAL_PACKAGES),
    "modules": list(BUILTIN_VAL_MODULES),
}


def held_out_paths(stdlib: str | Path) -> list[Path]:
    """What of a standard-library folder holds the builtin source's validation text: the held-out
    packages (folders), the modules' sources and type stubs, and their compiled files in
    `__pycache__` (a .pyc holds the docstrings and the code). Only the paths that exist."""
    root = Path(stdlib)
    found = [root / name for name in BUILTIN_VAL_PACKAGES]
    found += [root / f"{name}{ext}" for name in BUILTIN_VAL_MODULES for ext in (".py", ".pyi")]
    try:
        cached = sorted(os.listdir(root / "__pycache__"))
    except OSError:
        cached = []
    found += [root / "__pycache__" / f for f in cached if f.split(".", 1)[0] in BUILTIN_VAL_MODULES]
    return [p for p in found if os.path.lexists(p)]


def is_stdlib_folder(path: str | Path, entries: set[str] | None = None) -> bool:
    """A folder that looks like a Python standard library (or typeshed's stubs of one): it holds
    `os.py`, `os.pyi` or `os/__init__.pyi`. `entries` are its names, when the caller listed it."""
    names = entries if entries is not None else set(os.listdir(path))
    return (
        "os.py" in names
        or "os.pyi" in names
        or ("os" in names and os.path.isfile(Path(path, "os", "__init__.pyi")))
    )


def doc_hash(text: str) -> int:
    """A stable 64-bit hash of a document's content (the split and the leak check use it)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise PrepareError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def parquet_texts(path: Path, fix: str) -> Iterator[str]:
    """The non-empty values of the `text` column of a parquet file; PrepareError (ending with `fix`)
    when the file is not readable parquet or has no `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PrepareError(f"{path} is not a readable parquet file ({_short(e)}); {fix}") from None
    if "text" not in pf.schema_arrow.names:
        columns = ", ".join(pf.schema_arrow.names)
        raise PrepareError(f"{path} has no 'text' column (it has: {columns}); {fix}")
    try:
        for batch in pf.iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text and not text.isspace():
                    yield text
    except (pa.ArrowException, OSError) as e:
        raise PrepareError(f"{path} is corrupt ({_short(e)}); {fix}") from None


def verify_parquet(path: Path) -> None:
    """Raise unless `path` opens as parquet with rows and a `text` column (download check)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows <= 0:
        raise ValueError("no rows")
    if "text" not in pf.schema_arrow.names:
        raise ValueError("no 'text' column")


class Source(ABC):
    """Where documents come from. `fetch` makes the raw data present locally (downloading when it
    must, resumable); `documents(split)` then yields the texts of "train" or "val", always the
    same ones in the same order, and never one text in both."""

    name: str

    @abstractmethod
    def info(self, num_shards: int) -> dict:
        """A cheap JSON-able identity of the data `fetch(.., num_shards)` would give (no reading of
        contents): stored in the manifest, and compared to decide that a dataset is up to date."""

    @abstractmethod
    def fetch(self, raw_dir: Path, num_shards: int, progress: Progress | None = None) -> None:
        """Make the raw data present (downloads go under `raw_dir`); PrepareError if it can't."""

    @abstractmethod
    def documents(self, split: str) -> Iterator[str]:
        """The texts of `split` ("train" or "val"), in a fixed order. Call `fetch` first."""


# --- sources split by content hash (local files) -----------------------------------------------


class _HashSplitSource(Source):
    """A source whose documents are split by `doc_hash`: ~5% validation, at least one document."""

    def __init__(self) -> None:
        self._forced_val: int | None = None
        self._scanned = False

    @abstractmethod
    def _all_documents(self) -> Iterator[str]:
        """Every document, in a fixed order."""

    @abstractmethod
    def _empty_message(self) -> str: ...

    def fetch(self, raw_dir: Path, num_shards: int, progress: Progress | None = None) -> None:
        # Nothing to download; one pass makes sure both splits are non-empty.
        count = in_val = 0
        smallest: int | None = None
        for text in self._all_documents():
            h = doc_hash(text)
            count += 1
            in_val += h % 10_000 < VAL_PER_10K
            smallest = h if smallest is None else min(smallest, h)
        if count == 0:
            raise PrepareError(self._empty_message())
        if count < 2:
            raise PrepareError(
                f"source {self.name} has only one document; it needs at least two (train + val)"
            )
        # A small source may hash nothing into validation: then its smallest hash goes there.
        self._forced_val = smallest if in_val == 0 else None
        if in_val == count:
            raise PrepareError(f"source {self.name} has no training document; add more documents")
        self._scanned = True

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        if not self._scanned:
            self.fetch(Path(), 0)
        want_val = split == "val"
        for text in self._all_documents():
            h = doc_hash(text)
            if (h % 10_000 < VAL_PER_10K or h == self._forced_val) == want_val:
                yield text


def chunk_text(text: str, size: int) -> Iterator[str]:
    """Cut `text` at blank lines into pieces of at least about `size` characters (the last may be
    shorter). Long files become documents short enough for BOS-aligned rows, which crop whatever
    does not fit a row."""
    piece: list[str] = []
    length = 0
    for para in text.split("\n\n"):
        piece.append(para)
        length += len(para) + 2
        if length >= size:
            yield "\n\n".join(piece).strip("\n") + "\n"
            piece, length = [], 0
    rest = "\n\n".join(piece).strip("\n")
    if rest.strip():
        yield rest + "\n"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise PrepareError(f"cannot read {path} ({_short(e)}); fix its permissions or remove it") from None


class LocalSource(_HashSplitSource):
    """`local:PATH`: a directory (searched recursively), a file, or a glob of .txt / .md files (one
    document each), .jsonl (one document per line, field "text") and .parquet (column "text").

    A directory whose only entries with text are the subdirectories `train/` and `val/` has an
    explicit split: those folders are the splits, as given. Otherwise documents are split by hash."""

    def __init__(self, path: str) -> None:
        super().__init__()
        if not path:
            raise PrepareError(
                "local source needs a path: use --source local:PATH (a directory, file or glob)"
            )
        expanded = os.path.expanduser(path)
        self.is_glob = glob.has_magic(expanded)
        self.path = Path(os.path.abspath(expanded))
        self.name = f"local:{self.path}"

    def files(self) -> list[Path]:
        """The matching files, sorted (PrepareError when the path is missing or holds none)."""
        kinds = "/".join(LOCAL_SUFFIXES)
        if self.is_glob:
            found = [Path(p) for p in glob.glob(str(self.path), recursive=True)]
        elif self.path.is_dir():
            found = [
                p
                for p in self.path.rglob("*")
                if not any(x.startswith(".") for x in p.relative_to(self.path).parts)
            ]
        elif self.path.is_file():
            found = [self.path]
        else:
            raise PrepareError(
                f"local source {self.path} does not exist; give a directory, file or glob of {kinds} files"
            )
        files = sorted(p for p in found if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
        if not files:
            raise PrepareError(f"local source {self.path} has no {kinds} files; point it at your text")
        return files

    def _empty_message(self) -> str:
        return f"local source {self.path} has only empty documents; add some text"

    @property
    def explicit_split(self) -> bool:
        """True when PATH is a directory laid out as `train/` and `val/` (both present)."""
        return (
            not self.is_glob
            and self.path.is_dir()
            and (self.path / "train").is_dir()
            and (self.path / "val").is_dir()
        )

    def _split_documents(self, split: str) -> Iterator[str]:
        return LocalSource(str(self.path / split))._all_documents()

    def fetch(self, raw_dir: Path, num_shards: int, progress: Progress | None = None) -> None:
        if not self.explicit_split:
            return super().fetch(raw_dir, num_shards, progress)
        for split in ("train", "val"):
            if next(iter(self._split_documents(split)), None) is None:
                raise PrepareError(f"local source {self.path / split} has no documents; add some text")
        self._scanned = True

    def documents(self, split: str) -> Iterator[str]:
        if not self.explicit_split:
            return super().documents(split)
        _check_split(split)
        return self._split_documents(split)

    def info(self, num_shards: int) -> dict:
        files = self.files()
        h = hashlib.sha256()
        total = 0
        for p in files:
            st = p.stat()
            total += st.st_size
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"path": str(self.path), "files": len(files), "bytes": total, "listing_sha256": h.hexdigest()}

    def _all_documents(self) -> Iterator[str]:
        fix = "fix or remove it from the local source"
        for path in self.files():
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                yield from parquet_texts(path, fix)
            elif suffix == ".jsonl":
                yield from _jsonl_texts(path, fix)
            else:
                text = _read_text(path)
                if text and not text.isspace():
                    yield text


def _jsonl_texts(path: Path, fix: str) -> Iterator[str]:
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
            if not isinstance(text, str):
                raise TypeError("'text' is not a string")
        except (ValueError, KeyError, TypeError) as e:
            raise PrepareError(
                f'{path} line {lineno} is not JSON with a "text" string ({_short(e)}); {fix}'
            ) from None
        if text and not text.isspace():
            yield text


class BuiltinSource(Source):
    """The Python standard library's own source files (docstrings, comments and code), read as
    text and never imported: offline, on every machine with Python, ~12 MB on CPython 3.11.

    Validation is the held-out modules (`BUILTIN_VAL_PACKAGES`, `BUILTIN_VAL_MODULES`), training
    everything else: a rule by path, so that the sandbox can hide the validation text by path."""

    name = "builtin"
    # A module is cut into documents of about this many characters (a few hundred tokens), so that
    # a tiny-profile row holds whole documents instead of the cropped start of one module.
    DOCUMENT_CHARS = 1500
    # Third-party packages are not the standard library; test suites are mostly data, not prose.
    SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root or sysconfig.get_paths()["stdlib"])

    def files(self) -> list[Path]:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in self.SKIP_DIRS and not d.startswith("."))
            found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
        # A fixed pseudo-random order (by path hash), so that a token cap keeps a fair sample of
        # the whole library rather than the modules whose names start with "_" to "e".
        found.sort(key=lambda p: hashlib.sha256(p.relative_to(self.root).as_posix().encode()).digest())
        if not found:
            raise PrepareError(f"no Python source files under {self.root}; use --source local:PATH instead")
        return found

    def is_validation(self, path: Path) -> bool:
        """Whether a file of `files()` belongs to the validation split (a held-out module)."""
        parts = path.relative_to(self.root).parts
        return parts[0] in BUILTIN_VAL_PACKAGES or (len(parts) == 1 and path.stem in BUILTIN_VAL_MODULES)

    def info(self, num_shards: int) -> dict:
        files = self.files()
        total = sum(p.stat().st_size for p in files)
        return {
            "stdlib": str(self.root),
            "python": sys.version.split()[0],
            "files": len(files),
            "bytes": total,
            "split": BUILTIN_SPLIT,
        }

    def fetch(self, raw_dir: Path, num_shards: int, progress: Progress | None = None) -> None:
        # Nothing to download; both splits must have files.
        files = self.files()
        if not any(self.is_validation(p) for p in files):
            held = ", ".join((*BUILTIN_VAL_PACKAGES, *BUILTIN_VAL_MODULES))
            raise PrepareError(
                f"the standard library at {self.root} has none of the modules the builtin source "
                f"validates on ({held}); use another Python or --source local:PATH"
            )
        if all(self.is_validation(p) for p in files):
            raise PrepareError(
                f"the standard library at {self.root} has nothing to train on; use --source local:PATH"
            )

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        if split == "val":
            return self._documents(True)
        # a training chunk equal to a validation one (a short last chunk, `main()`) stays out
        val = {doc_hash(t) for t in self._documents(True)}
        return (t for t in self._documents(False) if doc_hash(t) not in val)

    def _documents(self, validation: bool) -> Iterator[str]:
        for path in self.files():
            if self.is_validation(path) != validation:
                continue
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # a few stdlib files are latin-1 or unreadable: skip them, deterministically
            yield from chunk_text(text, self.DOCUMENT_CHARS)


# --- climbmix (the Hugging Face hub) ------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


class ClimbMixSource(Source):
    """`karpathy/climbmix-400b-shuffle`: training shards shard_00000.. and the pinned validation
    shard, downloaded in parallel into the raw directory. `EVOLVE_HF_BASE_URL` overrides the host."""

    name = "climbmix"

    def __init__(
        self, base_url: str | None = None, workers: int = 8, attempts: int = 5, backoff: float = 1.0
    ) -> None:
        self._base_url = base_url
        self.workers = workers
        self.attempts = attempts
        self.backoff = backoff
        self._raw_dir: Path | None = None
        self._num_shards = 0

    @property
    def base_url(self) -> str:
        return (self._base_url or os.environ.get("EVOLVE_HF_BASE_URL") or HF_BASE_URL).rstrip("/")

    @staticmethod
    def train_shards(num_shards: int) -> list[str]:
        if not 1 <= num_shards <= CLIMBMIX_MAX_SHARD:
            raise PrepareError(f"--num-shards must be between 1 and {CLIMBMIX_MAX_SHARD}, got {num_shards}")
        return [shard_name(i) for i in range(num_shards)]

    def info(self, num_shards: int) -> dict:
        return {
            "dataset": HF_DATASET,
            "train_shards": self.train_shards(num_shards),
            "val_shard": shard_name(CLIMBMIX_VAL_SHARD),
        }

    def fetch(self, raw_dir: Path, num_shards: int, progress: Progress | None = None) -> None:
        names = self.train_shards(num_shards) + [shard_name(CLIMBMIX_VAL_SHARD)]
        raw_dir = Path(raw_dir)
        raw_dir.mkdir(parents=True, exist_ok=True)
        jobs = [DownloadJob(f"{self.base_url}/{name}", raw_dir / name) for name in names]
        download_all(
            jobs,
            workers=self.workers,
            attempts=self.attempts,
            backoff=self.backoff,
            verify=verify_parquet,
            progress=progress,
        )
        self._raw_dir, self._num_shards = raw_dir, num_shards

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        if self._raw_dir is None:
            raise PrepareError("climbmix shards are not fetched yet; run `evolve prepare`")
        names = [shard_name(CLIMBMIX_VAL_SHARD)] if split == "val" else self.train_shards(self._num_shards)
        for name in names:
            path = self._raw_dir / name
            yield from parquet_texts(path, f"delete {path} and rerun `evolve prepare` to download it again")


SOURCES: dict[str, Callable[[], Source]] = {"climbmix": ClimbMixSource, "builtin": BuiltinSource}


def get_source(spec: str) -> Source:
    """`climbmix`, `builtin` or `local:PATH` (a directory, file or glob)."""
    spec = (spec or "").strip()
    if spec in SOURCES:
        return SOURCES[spec]()
    if spec.startswith("local:"):
        return LocalSource(spec[len("local:") :])
    hint = f"; did you mean local:{spec}?" if spec and os.path.exists(os.path.expanduser(spec)) else ""
    raise PrepareError(f"unknown source {spec!r}; use climbmix, builtin or local:PATH{hint}")

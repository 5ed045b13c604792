"""Hashes that let the trainer notice tampering: with prepare's own code, or with the prepared data.

`package_hash` covers the source of the installed `prepare` package (the metric and the data
loader live there, outside the workspace the LLM edits); the trainer takes it before and after a
run, and a run that changed it is invalid. `dataset_hash` is a cheap check of a prepared dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_FILES = ("train.bin", "train.idx", "val.bin", "val.idx")


def package_hash(root: str | Path | None = None) -> str:
    """sha256 over the sorted relative paths and contents of every .py file of `prepare`."""
    root = Path(root) if root is not None else PACKAGE_DIR
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def dataset_hash(data_dir: str | Path) -> str:
    """sha256 over manifest.json and tokenizer.json (contents) and the size and mtime of each
    .bin/.idx file: cheap enough to take around every run, and changes if any of them is rewritten."""
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    for name in ("manifest.json", "tokenizer.json"):
        path = data_dir / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
        h.update(b"\0")
    for name in DATA_FILES:
        path = data_dir / name
        if path.is_file():
            st = path.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        else:
            h.update(f"{name}\0<missing>\0".encode())
    return h.hexdigest()
